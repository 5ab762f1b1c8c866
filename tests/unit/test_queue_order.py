"""The in-memory queue order against the definition of a position: a job's 1-based rank among
its model's queued jobs in claim order (priority DESC, start_tag, queue_seq), and the work of
the jobs ahead of it, after any sequence of enqueues, claims, cancels, retries and moves."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from queueing.queue_order import Keys, Place, QueueOrder

CONVERSATION = uuid.UUID(int=1)


def ranked(queued: dict[uuid.UUID, Keys], job_id: uuid.UUID) -> Place:
    mine = queued[job_id]
    ahead = [k for k in queued.values() if k.model == mine.model and k.key < mine.key]
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
        st.sampled_from([0.0, 0.5, 1.0, 2.5]),  # start tag
        st.sampled_from([0.01, 0.2, 1.5]),  # work
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_places_match_the_ranking_after_any_history(ops: list[tuple]) -> None:
    order, queued, left = QueueOrder(), {}, {}
    for n, (op, pick, model, user, priority, tag, work) in enumerate(ops):
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
    assert len(order) == len(queued)
    # Many at once (a walk of each model's queue) and a few (a rank each) agree with one by one.
    for asked in (list(queued) + list(left), sorted(queued)[:2]):
        got_all = order.places(asked)
        assert set(got_all) == {j for j in asked if j in queued}
        for job_id, place in got_all.items():
            one = order.place(job_id)
            assert one is not None and place.queue_position == one.queue_position
            assert abs(place.work_ahead - one.work_ahead) < 1e-9
            assert place.start_tag == one.start_tag
    for job_id in queued:
        got = order.place(job_id)
        assert got is not None
        want = ranked(queued, job_id)
        assert got.queue_position == want.queue_position
        assert abs(got.work_ahead - want.work_ahead) < 1e-9
        assert got.start_tag == want.start_tag
    for job_id in left:
        assert order.place(job_id) is None


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
