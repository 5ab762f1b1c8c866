"""The in-memory queue order against the definition of a position: a job's 1-based rank among
its model's queued jobs in claim order (priority DESC, start_tag, queue_seq), and the work of
the jobs ahead of it, after any sequence of enqueues, claims, cancels, retries and moves."""

from __future__ import annotations

import gc
import random
import uuid
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList

from queueing.queue_order import WALK_SHARE, Keys, Place, QueueOrder, sort_key

CONVERSATION = uuid.UUID(int=1)


def ranked(queued: dict[uuid.UUID, Keys], job_id: uuid.UUID) -> Place:
    mine = queued[job_id]
    claim = (-mine.priority, mine.start_tag, mine.queue_seq)
    ahead = [
        k
        for k in queued.values()
        if k.model == mine.model and (-k.priority, k.start_tag, k.queue_seq) < claim
    ]
    return Place(1 + len(ahead), sum(k.work for k in ahead), mine.start_tag)


def keys(n: int, model: str, user: int, priority: int, tag: float, work: float) -> Keys:
    return Keys(uuid.UUID(int=n + 10), CONVERSATION, model, user, priority, tag, n, work)


operations = st.lists(
    st.tuples(
        st.sampled_from(["enqueue", "enqueue", "enqueue", "claim", "cancel", "retry", "move"]),
        st.integers(0, 1_000_000),
        st.sampled_from(["a", "b"]),
        st.integers(0, 3),  # user
        st.integers(-1, 1),  # priority
        st.sampled_from([-1.5, 0.0, 0.5, 1.0, 2.5, 1e12]),  # start tag
        st.sampled_from([0.01, 0.2, 1.5]),  # work
    ),
    max_size=120,
)


def replay(
    ops: list[tuple],
) -> tuple[QueueOrder, dict[uuid.UUID, Keys], dict[uuid.UUID, Keys]]:
    """The order after the history, and the jobs queued and left as the history says."""
    order: QueueOrder = QueueOrder()
    queued: dict[uuid.UUID, Keys] = {}
    left: dict[uuid.UUID, Keys] = {}
    advance(order, queued, left, ops, 0)
    return order, queued, left


def advance(
    order: QueueOrder,
    queued: dict[uuid.UUID, Keys],
    left: dict[uuid.UUID, Keys],
    ops: list[tuple],
    first: int,
) -> None:
    """Apply the operations (numbered from `first`) to the order and to the bookkeeping."""
    for n, (op, pick, model, user, priority, tag, work) in enumerate(ops, start=first):
        if op == "enqueue":
            k = keys(n, model, user, priority, tag, work)
            queued[k.job_id] = k
            order.apply("queued", k.job_id, k)
        elif op in ("claim", "cancel") and queued:
            job_id = sorted(queued)[pick % len(queued)]
            left[job_id] = queued.pop(job_id)
            order.apply("processing" if op == "claim" else "canceled", job_id, left[job_id])
        elif op == "retry" and left:
            job_id = sorted(left)[pick % len(left)]
            queued[job_id] = left.pop(job_id)  # a retry keeps its keys
            order.apply("queued", job_id, queued[job_id])
        elif op == "move" and queued:
            # A move to the front rotates one user's slots (keys) among that user's jobs.
            moved = queued[sorted(queued)[pick % len(queued)]]
            mine = sorted(
                (
                    k
                    for k in queued.values()
                    if (k.user_id, k.model) == (moved.user_id, moved.model)
                ),
                key=lambda k: k.key,
            )
            slots = [(k.priority, k.start_tag, k.queue_seq) for k in mine]
            rotated = [moved, *(k for k in mine if k is not moved)]
            for k, (p, t, q) in zip(rotated, slots, strict=True):
                queued[k.job_id] = k._replace(priority=p, start_tag=t, queue_seq=q)
            order.replace_user(moved.user_id, moved.model, [queued[k.job_id] for k in mine])


def assert_the_ranking(
    order: QueueOrder,
    queued: dict[uuid.UUID, Keys],
    left: dict[uuid.UUID, Keys],
    asked: list[uuid.UUID],
) -> None:
    """places(asked) holds each queued one's brute-force place, exactly place()'s, and no other."""
    got = order.places(asked)
    assert set(got) == {j for j in asked if j in queued}
    for job_id, place in got.items():
        assert place == order.place(job_id)  # the same floats, not only close ones
        want = ranked(queued, job_id)
        assert place.queue_position == want.queue_position
        assert abs(place.work_ahead - want.work_ahead) < 1e-9 * max(1.0, want.work_ahead)
        assert place.start_tag == want.start_tag
    for job_id in left:
        assert order.place(job_id) is None


def check_history(ops: list[tuple], data: st.DataObject) -> None:
    order, queued, left = replay(ops)
    assert len(order) == len(queued)
    everyone = sorted(queued) + sorted(left)
    # All at once (a walk of each model's queue), a few (a rank each), and any subset.
    subset = data.draw(st.lists(st.sampled_from(everyone), unique=True)) if everyone else []
    for asked in (everyone, sorted(queued)[:2], subset, []):
        assert_the_ranking(order, queued, left, asked)


@settings(max_examples=150, deadline=None)
@given(operations, st.data())
def test_places_match_the_ranking_after_any_history(ops: list[tuple], data: st.DataObject) -> None:
    check_history(ops, data)


@settings(max_examples=150, deadline=None)
@given(operations, st.data())
def test_places_match_the_ranking_across_sublist_boundaries(
    ops: list[tuple], data: st.DataObject
) -> None:
    """places() reads SortedList's sublists itself: with sublists of 2 to 4 keys (a load factor
    of 2; 1,000 by default) every history splits and joins them, and the places stay exact."""
    with mock.patch.object(SortedList, "DEFAULT_LOAD_FACTOR", 2):
        check_history(ops, data)


def test_places_of_a_big_queue_match_a_walk_in_claim_order() -> None:
    """At the default load factor: lists of many sublists, thinned so that some are joined,
    asked whole (a walk), sparse (a rank each) and at each sublist's first and last key."""
    rng = random.Random(14)
    jobs = [
        keys(
            n,
            rng.choice("ab"),
            n % 8,
            rng.choice((0, 0, 0, 1)),
            float(n // 8),
            rng.choice((5.24288, 1.31072, 20.97152)),
        )
        for n in range(30_000)
    ]
    order = QueueOrder()
    order.load(jobs)
    for k in jobs[5_000:9_000]:  # a run of claims: the sublists that held them shrink and join
        order.apply("processing", k.job_id, k)
    queued = {k.job_id: k for k in jobs[:5_000] + jobs[9_000:]}
    want: dict[uuid.UUID, Place] = {}
    for model in "ab":
        mine = sorted((k for k in queued.values() if k.model == model), key=lambda k: k.key)
        ahead: dict[float, int] = {}
        for position, k in enumerate(mine, start=1):
            work_ahead = 0.0
            for work, count in ahead.items():
                work_ahead += count * work
            want[k.job_id] = Place(position, work_ahead, k.start_tag)
            ahead[k.work] = ahead.get(k.work, 0) + 1
    lists = [lst for m in order._models.values() for lst in m.by_work.values()]
    assert all(len(lst._lists) >= 3 for lst in lists)  # the test spans sublists
    by_key = {k.key: k.job_id for k in queued.values()}
    edges = [by_key[sub[i]] for lst in lists for sub in lst._lists for i in (0, -1)]
    sparse = sorted(queued)[:: 4 * WALK_SHARE]
    for asked in (list(queued), sparse, edges, edges[:3]):
        got = order.places(asked)
        assert set(got) == set(asked)
        for job_id, place in got.items():
            assert place.queue_position == want[job_id].queue_position
            assert abs(place.work_ahead - want[job_id].work_ahead) < 1e-9 * place.work_ahead + 1e-9
            assert place.start_tag == want[job_id].start_tag
            assert place == order.place(job_id)


finite = st.floats(allow_nan=False, allow_infinity=True)
claim_keys = st.tuples(st.integers(-(2**31), 2**31 - 1), finite, st.integers(0, 2**63 - 1))


@given(claim_keys, claim_keys)
def test_sort_key_sorts_as_the_claim_order(a: tuple, b: tuple) -> None:
    """The one-int key orders jobs as (priority DESC, start_tag, queue_seq) does, ties too."""
    ka, kb = sort_key(*a), sort_key(*b)
    ta, tb = (-a[0], a[1], a[2]), (-b[0], b[1], b[2])
    assert (ka < kb) == (ta < tb)
    assert (ka == kb) == (ta == tb)


def test_positions_are_a_permutation_per_model() -> None:
    order = QueueOrder()
    jobs = [keys(n, "ab"[n % 2], n % 3, 0, float(n % 4), 0.1) for n in range(40)]
    order.load(jobs)
    for model in "ab":
        places = sorted(order.place(k.job_id).queue_position for k in jobs if k.model == model)  # type: ignore[union-attr]
        assert places == list(range(1, 21))
    assert order.in_conversation(CONVERSATION) == {k.job_id for k in jobs}
    order.apply("canceled", jobs[0].job_id, None)
    assert jobs[0].job_id not in order.in_conversation(CONVERSATION)


def test_places_leaves_the_collector_as_it_found_it() -> None:
    """A pass holds off the cyclic GC while it makes its places (nothing it makes can be in a
    cycle), and gives it back as it was: on, or off when someone else had turned it off."""
    order = QueueOrder()
    order.load(keys(n, "a", 0, 0, float(n), 1.0) for n in range(100))
    asked = [uuid.UUID(int=n + 10) for n in range(100)]
    assert gc.isenabled()
    order.places(asked)
    assert gc.isenabled()
    gc.disable()
    try:
        order.places(asked)
        assert not gc.isenabled()
    finally:
        gc.enable()


def followed_places(order: QueueOrder, asked: list[uuid.UUID]) -> dict[uuid.UUID, Place]:
    """One pass of the order's Following, as a dict of places (each model's lists checked
    to be in claim order, with no job twice)."""
    out: dict[uuid.UUID, Place] = {}
    for group in order.following().places(asked):
        n = len(group.job_ids)
        assert len(group.positions) == len(group.work_ahead) == len(group.start_tags) == n
        assert group.positions == sorted(group.positions)
        for job_id, *place in zip(
            group.job_ids, group.positions, group.work_ahead, group.start_tags, strict=True
        ):
            assert job_id not in out
            assert order.model_of(job_id) == group.model
            out[job_id] = Place(*place)
    return out


@settings(max_examples=400, deadline=None)
@given(operations, st.data())
def test_following_matches_place_pass_after_pass(ops: list[tuple], data: st.DataObject) -> None:
    """A Following kept through a history, asked for a changing set of jobs at random points
    (its ranks shifted by the journal, its newly asked and changed jobs ranked afresh), gives
    at every pass exactly place() of every asked queued job, and nothing for the others; with
    its thresholds low and high, so that each way (shift or rank afresh, insert or merge, drop
    by key or by a sweep) is taken."""
    shift_at_most = data.draw(st.sampled_from([0, 3, 64]))
    insert_at_most = data.draw(st.sampled_from([0, 2, 32]))
    with (
        mock.patch("queueing.queue_order.SHIFT_AT_MOST", shift_at_most),
        mock.patch("queueing.queue_order.INSERT_AT_MOST", insert_at_most),
    ):
        follow_history(ops, data)


def follow_history(ops: list[tuple], data: st.DataObject) -> None:
    cut = sorted(data.draw(st.lists(st.integers(0, len(ops)), max_size=6)))
    order: QueueOrder = QueueOrder()
    queued: dict[uuid.UUID, Keys] = {}
    left: dict[uuid.UUID, Keys] = {}
    ever: set[uuid.UUID] = set()
    done = 0
    for end in [*cut, len(ops)]:
        advance(order, queued, left, ops[done:end], done)
        done = end
        ever |= set(queued) | set(left)
        asked = data.draw(st.lists(st.sampled_from(sorted(ever)), unique=True)) if ever else []
        if data.draw(st.booleans()):
            asked = [*queued, *asked]  # everyone queued, as a conversation's follower asks
        got = followed_places(order, asked)
        assert set(got) == {j for j in asked if j in queued}
        for job_id, place in got.items():
            assert place == order.place(job_id)  # the same floats
            assert place.queue_position == ranked(queued, job_id).queue_position
