"""The queue's order in memory, exact at every seq: positions in O(log n), not O(queue).

A web process loads every queued job's sort keys once, in the same snapshot as the newest seq,
then applies the transition log in seq order (seq order is commit order), so after event s it
holds exactly the queue after s. A job's position is its rank among its model's queued jobs in
claim order, (priority DESC, start_tag, queue_seq), the order gq_lock_and_claim_batch takes.

The ETA also needs the work (megapixel-steps) of the jobs ahead. Jobs of one model come in a
handful of sizes, so each model keeps one sorted list per distinct work value: the rank is the
sum of the ranks in each list and the work ahead the sum of rank times work, both exact, in
O(sizes x log n).

The fan-out places every followed job after each batch of events. A pass over thousands of
jobs keeps its loops out of Python: the ranks come from C-level bisects on SortedList's own
sublists (`_lists`, `_maxes`, with prefix counts) while the asked jobs are few of the queue, and
from one index of the queue in claim order once they are many; the claim order is one int per
job, and each place a pass gives is the one place() gives, to the last bit of its work ahead.

The fan-out's pass runs again and again over much the same jobs while a few others enter and
leave the queue, so `Following` keeps its jobs' ranks from pass to pass and moves them by what
changed (the order's journal of keys added and removed): a rank is a count of the keys ahead, so
each key that came or went shifts every followed rank behind it by one, and the ranks of the
followed jobs between two changed keys shift alike, by one slice operation.
"""

from __future__ import annotations

import gc
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, count, repeat
from operator import add, attrgetter, eq, itemgetter, mul, not_
from typing import Any, NamedTuple, cast
from uuid import UUID

from sortedcontainers import SortedList

from .states import JobStatus

# Claim order, higher priority first, then the fair-share start tag, then arrival, as one int:
# a pass compares keys about log2(n) times per job, and an int compares in one C call where a
# (-priority, start_tag, queue_seq) tuple takes three.
Key = int
_FLOAT = struct.Struct(">d")
_SIGN = 1 << 63
_ALL64 = (1 << 64) - 1


def sort_key(priority: int, start_tag: float, queue_seq: int) -> Key:
    """The int that sorts as (-priority, start_tag, queue_seq): the tag's IEEE 754 bits, made
    to sort as the float does (a positive float's sign bit set, a negative one's bits all
    flipped), between the priority above and the queue_seq (a bigint sequence, below 2**63)."""
    bits = int.from_bytes(_FLOAT.pack(start_tag + 0.0), "big")  # + 0.0: -0.0 is 0.0
    bits = bits ^ _ALL64 if bits & _SIGN else bits | _SIGN
    return (-priority << 128) + (bits << 64) + queue_seq


class Place(NamedTuple):
    """A queued job's place: 1-based position, the work ahead of it, its start tag."""

    queue_position: int
    work_ahead: float
    start_tag: float


class Keys(NamedTuple):
    """A queued job's owner and sort keys, as the log's readers get them."""

    job_id: UUID
    conversation_id: UUID
    model: str
    user_id: int
    priority: int
    start_tag: float
    queue_seq: int
    work: float

    @property
    def key(self) -> Key:
        return sort_key(self.priority, self.start_tag, self.queue_seq)


class _Queued(NamedTuple):
    """What the order holds of a queued job: its sort key (computed once), its start tag and
    its keys. A pass gets the first two with itemgetter, cheaper than an attribute's lookup."""

    key: Key
    start_tag: float
    keys: Keys


# A pass that wants at least 1/WALK_SHARE of a model's queue walks it instead of ranking each
# job, 2/WALK_SHARE when the model has jobs of several sizes (their walk merges the lists):
# where the two cost the same, measured at 10,000 and 100,000 queued.
WALK_SHARE = 4


class _Change(NamedTuple):
    """A key that entered (+1) or left (-1) one of a model's work lists, and whose it was."""

    model: str
    work: float
    key: Key
    sign: int
    job: int  # the job's UUID as an int


_KEY = itemgetter(0)
_TAG = itemgetter(1)
_MODEL = attrgetter("keys.model")
_INT = attrgetter("int")


def _bisected(lst: SortedList, keys: list[Key]) -> list[int]:
    """How many of the list's keys sort before each of `keys`: SortedList.bisect_left's answer
    from its sublists directly (`_maxes` picks the sublist, prefix counts give the keys before
    it), so that the loop over keys is map's, not a Python call of bisect_left and _loc per key."""
    sublists: list[list[Key]] = lst._lists
    before = [0, *accumulate(map(len, sublists))]
    at = list(map(bisect_left, repeat(lst._maxes), keys))
    sublists = [*sublists, []]  # a key after the last sublist's max: all of them are before it
    inside = map(bisect_left, map(sublists.__getitem__, at), keys)
    return list(map(add, map(before.__getitem__, at), inside))


@contextmanager
def _collector_held() -> Iterator[None]:
    """The cyclic garbage collector held off while a pass makes its places. A pass makes a
    Place per job, which the collector tracks (a tuple subclass, never untracked as a tuple of
    numbers is): at 100,000 jobs that set off a collection of the whole heap on nearly every
    pass, half its time. Nothing a pass makes can be in a cycle, so there is nothing to find."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class _Model:
    by_work: dict[float, SortedList] = field(default_factory=dict)  # work -> SortedList[Key]

    def add(self, key: Key, work: float) -> None:
        lst = self.by_work.get(work)
        if lst is None:
            lst = self.by_work[work] = SortedList()
        lst.add(key)

    def remove(self, key: Key, work: float) -> None:
        lst = self.by_work[work]
        lst.remove(key)
        if not lst:
            del self.by_work[work]

    def place(self, key: Key, start_tag: float) -> Place:
        position, work_ahead = 1, 0.0
        for work, lst in self.by_work.items():
            ahead = lst.bisect_left(key)
            position += ahead
            work_ahead += ahead * work
        return Place(position, work_ahead, start_tag)

    def places(self, keys: list[Key], tags: Iterable[float]) -> Iterator[Place]:
        """The places of many of the model's queued jobs, in `keys`' order, each equal to
        place()'s. A job's rank in each work list comes from bisects on that list's sublists
        while the asked are few of the queue, from one claim-order index of all of it once they
        are many; either way the loops over jobs run in C (map, zip, accumulate), not in Python,
        which is what a pass over thousands of jobs costs. Lazy: a list of them would be one
        more big list for the garbage collector to traverse while they are made."""
        position, work_ahead = self.summed(self.ranks(keys))
        # Place._make without a Python frame per job.
        made = map(tuple.__new__, repeat(Place), zip(position, work_ahead, tags, strict=True))
        return cast("Iterator[Place]", made)

    def ranks(self, keys: list[Key]) -> list[list[int]]:
        """Each key's rank in each work list (in by_work's order): from bisects while the keys
        are few of the queue, from a walk of it in claim order once they are many."""
        if len(keys) * WALK_SHARE < len(self) * min(len(self.by_work), 2):
            return [_bisected(lst, keys) for lst in self.by_work.values()]
        return self._walked(keys)

    def summed(self, ranks: list[list[int]]) -> tuple[Iterator[int], Iterator[float]]:
        """Positions and work ahead from the ranks in each work list (in by_work's order), lazily:
        the same sums in the same order as place(), so both give the same floats (place()
        starts from 0.0, which adds nothing: no work is negative)."""
        works = list(self.by_work)
        position: Iterator[int] = map(add, ranks[0], repeat(1))
        work_ahead: Iterator[float] = map(mul, ranks[0], repeat(works[0]))
        for work, ahead in zip(works[1:], ranks[1:], strict=True):
            position = map(add, position, ahead)
            work_ahead = map(add, work_ahead, map(mul, ahead, repeat(work)))
        return position, work_ahead

    def _walked(self, keys: list[Key]) -> list[list[int]]:
        """Each key's rank in each work list, from the model's whole queue in claim order: the
        work lists merged (one sort, which finds them already sorted runs) with, at each place,
        how many of each list's jobs come before it."""
        runs = [list(chain.from_iterable(lst._lists)) for lst in self.by_work.values()]
        if len(runs) == 1:
            merged, ahead = runs[0], None  # a job's index in its only list is its rank there
        else:
            tagged = sorted(chain.from_iterable(zip(run, repeat(i)) for i, run in enumerate(runs)))
            merged = list(map(itemgetter(0), tagged))
            tags = list(map(itemgetter(1), tagged))
            ahead = [
                list(accumulate(map(eq, tags, repeat(i)), initial=0)) for i in range(len(runs))
            ]
        at = dict(zip(merged, count()))  # keys are unique: queue_seq is
        where = list(map(at.__getitem__, keys))
        if ahead is None:
            return [where]
        return [list(map(before.__getitem__, where)) for before in ahead]

    def __len__(self) -> int:
        return sum(len(lst) for lst in self.by_work.values())


_LEAVES = frozenset({JobStatus.PROCESSING, JobStatus.CANCELED, JobStatus.COMPLETE, JobStatus.ERROR})


class QueueOrder:
    """Every queued job of every model, in claim order."""

    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}
        # Jobs by their UUID's int: hashing a UUID runs Python (UUID.__hash__ is hash(self.int)),
        # an int's hash does not, and a position pass looks up every job it follows.
        self._jobs: dict[int, _Queued] = {}
        self._of_user: dict[tuple[int, str], set[UUID]] = {}
        self._of_conversation: dict[UUID, set[UUID]] = {}
        # Every key added (+1) and removed (-1) since a Following last took them, for it to move
        # its ranks by; None once there were too many to be worth it (or after a load).
        self._journal: list[_Change] | None = None
        self._journal_limit = 0
        self._following: Following | None = None

    def load(self, queued: Iterable[Keys]) -> None:
        """Start from a snapshot of the queued jobs (replacing whatever was held)."""
        self._models, self._jobs, self._of_user, self._of_conversation = {}, {}, {}, {}
        self._journal = None  # the Following ranks afresh
        for keys in queued:
            self._add(keys)

    def queued(self, keys: Keys) -> None:
        """A queued event: the job enters the queue, or (a move, a retry) takes new keys."""
        self.remove(keys.job_id)
        self._add(keys)

    def remove(self, job_id: UUID) -> None:
        """The job left the queue (or is gone): nothing when it was not in it."""
        queued = self._jobs.pop(job_id.int, None)
        if queued is not None:
            old = queued.keys
            self._models[old.model].remove(queued.key, old.work)
            if self._journal is not None:
                self._note(_Change(old.model, old.work, queued.key, -1, job_id.int))
            _discard(self._of_user, (old.user_id, old.model), job_id)
            _discard(self._of_conversation, old.conversation_id, job_id)

    def apply(self, status: str, job_id: UUID, keys: Keys | None) -> None:
        """One event of the log: queued with the job's keys (None once the row is gone)."""
        if status == JobStatus.QUEUED and keys is not None:
            self.queued(keys)
        elif status in _LEAVES or keys is None:
            self.remove(job_id)

    def replace_user(self, user_id: int, model: str, queued: Iterable[Keys]) -> None:
        """A user's queued jobs of a model, re-read (a move to the front rotated their keys)."""
        for job_id in list(self._of_user.get((user_id, model), ())):
            self.remove(job_id)
        for keys in queued:
            self._add(keys)

    def place(self, job_id: UUID) -> Place | None:
        """The job's place in its model's queue, or None when it is not queued."""
        queued = self._jobs.get(job_id.int)
        if queued is None:
            return None
        return self._models[queued.keys.model].place(queued.key, queued.start_tag)

    def places(self, job_ids: Iterable[UUID]) -> dict[UUID, Place]:
        """The places of many jobs (those queued), each as place() gives it, in one pass per
        model whose cost per job is a few C-level steps (see _Model.places)."""
        with _collector_held():
            return self._places(job_ids)

    def _places(self, job_ids: Iterable[UUID]) -> dict[UUID, Place]:
        ids = list(job_ids)
        got = list(map(self._jobs.get, map(_INT, ids)))
        found: list[_Queued] = list(filter(None, got))
        if len(found) < len(ids):
            ids = list(compress(ids, got))  # the queued ones
        if not found:
            return {}
        if len(self._models) == 1:  # the usual case: no grouping by model
            (order,) = self._models.values()
            return dict(
                zip(ids, order.places(list(map(_KEY, found)), map(_TAG, found)), strict=True)
            )
        out: dict[UUID, Place] = {}
        for model in dict.fromkeys(map(_MODEL, found)):  # in the order first asked
            mine = list(map(model.__eq__, map(_MODEL, found)))
            of_model = list(compress(found, mine))
            places = self._models[model].places(list(map(_KEY, of_model)), map(_TAG, of_model))
            out.update(zip(compress(ids, mine), places, strict=True))
        return out

    def following(self) -> Following:
        """The one Following of this order (it alone takes the order's journal)."""
        if self._following is None:
            self._following = Following(self)
        return self._following

    def keys_of(self, job_id: UUID) -> Keys | None:
        """A queued job's keys (None when it is not queued)."""
        queued = self._jobs.get(job_id.int)
        return None if queued is None else queued.keys

    def model_of(self, job_id: UUID) -> str:
        """A queued job's model (KeyError when it is not queued)."""
        return self._jobs[job_id.int].keys.model

    def conversations(self) -> frozenset[UUID]:
        """The conversations that have queued jobs."""
        return frozenset(self._of_conversation)

    def in_conversation(self, conversation_id: UUID) -> frozenset[UUID]:
        """The conversation's queued jobs."""
        return frozenset(self._of_conversation.get(conversation_id, ()))

    def is_queued(self, job_id: UUID) -> bool:
        return job_id.int in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def take_changes(self, limit: int) -> list[_Change] | None:
        """The keys added and removed since the last call, in order (None: more than its
        limit, or a load came between), and a fresh journal of at most `limit` for the next."""
        changes, self._journal, self._journal_limit = self._journal, [], limit
        return changes

    def _note(self, change: _Change) -> None:
        journal = cast("list[_Change]", self._journal)
        if len(journal) < self._journal_limit:
            journal.append(change)
        else:
            self._journal = None  # whoever follows starts over, cheaper by then

    def _add(self, keys: Keys) -> None:
        order = self._models.get(keys.model)
        if order is None:
            order = self._models[keys.model] = _Model()
        key = keys.key
        order.add(key, keys.work)
        self._jobs[keys.job_id.int] = _Queued(key, keys.start_tag, keys)
        if self._journal is not None:  # none before the first pass, nor during a load
            self._note(_Change(keys.model, keys.work, key, 1, keys.job_id.int))
        self._of_user.setdefault((keys.user_id, keys.model), set()).add(keys.job_id)
        self._of_conversation.setdefault(keys.conversation_id, set()).add(keys.job_id)


class Followed(NamedTuple):
    """One model's followed queued jobs and their places, as parallel lists in claim order
    (job_ids and start_tags are the Following's own: read them before its next pass)."""

    model: str
    job_ids: list[UUID]
    positions: list[int]
    work_ahead: list[float]
    start_tags: list[float]


@dataclass
class _Tracked:
    """One model's followed queued jobs in claim order: their keys, UUID ints, UUIDs and start
    tags, and each one's rank in each work list (every list of the model's by_work, and maybe
    lists emptied since, whose ranks are all 0)."""

    keys: list[Key]
    ints: list[int]
    ids: list[UUID]
    tags: list[float]
    ranks: dict[float, list[int]]

    def lists(self) -> list[list[Any]]:
        return [self.keys, self.ints, self.ids, self.tags, *self.ranks.values()]

    def keep(self, kept: list[bool]) -> None:
        """Only the jobs marked kept."""
        self.keys, self.ints = list(compress(self.keys, kept)), list(compress(self.ints, kept))
        self.ids, self.tags = list(compress(self.ids, kept)), list(compress(self.tags, kept))
        self.ranks = {work: list(compress(r, kept)) for work, r in self.ranks.items()}


_JOB_INT = attrgetter("keys.job_id.int")
_JOB_ID = attrgetter("keys.job_id")
INSERT_AT_MOST = 32  # jobs newly followed in a pass that are inserted one by one, not merged
# A pass shifts ranks by at most this many changes, plus one per SHIFT_SHARE jobs followed: a
# change costs a few Python steps and a slice, ranking afresh about a microsecond per job.
SHIFT_AT_MOST = 64
SHIFT_SHARE = 4


class Following:
    """The places of the jobs the fan-out follows, pass after pass. It keeps each followed
    job's rank in each work list and, at the next pass, moves them by the keys that entered
    and left the order since (its journal): each changed key shifts the ranks of the followed
    jobs behind it by one, so the jobs between two changed keys shift alike, one slice each.
    A followed job that changed itself (left, came back, took new keys), or is newly asked, is
    ranked afresh; too many changes, and every job is. Each place is the one place() gives."""

    def __init__(self, order: QueueOrder) -> None:
        self._order = order
        self._asked: set[int] = set()  # the UUID ints asked at the last pass
        self._models: dict[str, _Tracked] = {}

    def places(self, job_ids: Iterable[UUID]) -> list[Followed]:
        """The places of those of `job_ids` that are queued, per model."""
        with _collector_held():
            return self._places(job_ids)

    def _places(self, job_ids: Iterable[UUID]) -> list[Followed]:
        asked = set(map(_INT, job_ids))
        # Past SHIFT_AT_MOST changes (or a load) between two passes, ranking afresh is cheaper.
        changes = self._order.take_changes(SHIFT_AT_MOST + len(asked) // SHIFT_SHARE)
        if changes is None:
            self._asked, self._models = set(), {}
            changed: dict[int, tuple[str, Key]] = {}
        else:
            changed = self._shift(changes)
        old = self._asked
        if changed or len(asked) != len(old) or asked != old:
            dropped = (old - asked) | changed.keys()
            if dropped:
                self._drop(dropped, changed)
            added = (asked - old) | (changed.keys() & asked)
            if added:
                self._add(added)
        self._asked = asked
        return [self._placed(model, tracked) for model, tracked in self._models.items()]

    def _shift(self, changes: list[_Change]) -> dict[int, tuple[str, Key]]:
        """Move the ranks by the changed keys; the followed jobs that changed themselves, with
        the model and key each was followed at (the first key it lost: a queued job's first
        change is its removal)."""
        by_list: dict[tuple[str, float], list[tuple[Key, int]]] = {}
        for change in changes:
            by_list.setdefault((change.model, change.work), []).append((change.key, change.sign))
        for (model, work), moved in by_list.items():
            tracked = self._models.get(model)
            if tracked is None:
                continue
            ranks = tracked.ranks.get(work)
            if ranks is None:  # a work list new since: nobody had anyone of it ahead
                ranks = [0] * len(tracked.keys)
            moved.sort()
            tracked.ranks[work] = _shifted(ranks, tracked.keys, moved)
        changed: dict[int, tuple[str, Key]] = {}
        for change in changes:
            if change.job in self._asked and change.job not in changed:
                changed[change.job] = (change.model, change.key)
        return changed

    def _drop(self, dropped: set[int], changed: dict[int, tuple[str, Key]]) -> None:
        """Stop following these jobs: found by their keys while they are few (a claim takes
        those at the head, a delete at the end of a list costs nothing), by one sweep else."""
        if len(dropped) > INSERT_AT_MOST:
            for model, tracked in list(self._models.items()):
                gone = list(map(dropped.__contains__, tracked.ints))
                if any(gone):
                    tracked.keep(list(map(not_, gone)))
                    if not tracked.keys:
                        del self._models[model]
            return
        at: dict[str, list[int]] = {}
        for job in dropped:
            was = changed.get(job)
            if was is None:  # no longer asked, unchanged: queued at the key it was followed at
                queued = self._order._jobs.get(job)
                if queued is None:
                    continue  # asked while it was not queued: never followed
                was = (queued.keys.model, queued.key)
            model, key = was
            held = self._models.get(model)
            if held is not None:
                i = bisect_left(held.keys, key)
                if i < len(held.keys) and held.ints[i] == job:
                    at.setdefault(model, []).append(i)
        for model, where in at.items():
            tracked = self._models[model]
            for lst in tracked.lists():
                for i in sorted(where, reverse=True):
                    del lst[i]
            if not tracked.keys:
                del self._models[model]

    def _add(self, added: set[int]) -> None:
        """Rank the newly followed (queued) jobs and put them in their places."""
        found = list(filter(None, map(self._order._jobs.get, added)))
        for model in dict.fromkeys(map(_MODEL, found)):
            mine = sorted(compress(found, map(model.__eq__, map(_MODEL, found))), key=_KEY)
            order = self._order._models[model]
            keys = list(map(_KEY, mine))
            new = _Tracked(
                keys,
                list(map(_JOB_INT, mine)),
                list(map(_JOB_ID, mine)),
                list(map(_TAG, mine)),
                dict(zip(order.by_work, order.ranks(keys), strict=True)),
            )
            tracked = self._models.get(model)
            self._models[model] = new if tracked is None else _merged(tracked, new)

    def _placed(self, model: str, tracked: _Tracked) -> Followed:
        order = self._order._models[model]
        for work in [w for w in tracked.ranks if w not in order.by_work]:
            del tracked.ranks[work]  # its list emptied: every rank in it is 0
        position, work_ahead = order.summed([tracked.ranks[w] for w in order.by_work])
        return Followed(model, tracked.ids, list(position), list(work_ahead), tracked.tags)


def _shifted(ranks: list[int], keys: list[Key], moved: list[tuple[Key, int]]) -> list[int]:
    """The ranks of jobs with these (sorted) keys once the moved keys (sorted) came (+1) or
    went (-1): each moves those behind it. A moved key equal to a followed job's is that job's
    own, and it is ranked afresh: on which side of the cut it falls does not matter."""
    out: list[int] = []
    at = shift = 0
    for key, sign in moved:
        cut = bisect_right(keys, key, at)
        if cut > at:
            out += map(add, ranks[at:cut], repeat(shift)) if shift else ranks[at:cut]
            at = cut
        shift += sign
    out += map(add, ranks[at:], repeat(shift)) if shift else ranks[at:]
    return out


def _merged(tracked: _Tracked, new: _Tracked) -> _Tracked:
    """Two sets of one model's followed jobs as one, in claim order."""
    for work in new.ranks.keys() - tracked.ranks.keys():
        tracked.ranks[work] = [0] * len(tracked.keys)  # only emptied lists: all 0
    for work in tracked.ranks.keys() - new.ranks.keys():
        new.ranks[work] = [0] * len(new.keys)
    if len(new.keys) <= INSERT_AT_MOST:
        lists, works = tracked.lists(), list(tracked.ranks)
        parts: list[list[Any]] = [
            new.keys,
            new.ints,
            new.ids,
            new.tags,
            *(new.ranks[w] for w in works),
        ]
        for i in reversed(range(len(new.keys))):
            at = bisect_left(tracked.keys, new.keys[i])
            for lst, part in zip(lists, parts, strict=True):
                lst.insert(at, part[i])
        return tracked
    keys = tracked.keys + new.keys
    where = sorted(range(len(keys)), key=keys.__getitem__)  # two sorted runs: one merge

    def joined(a: list[Any], b: list[Any]) -> list[Any]:
        both = a + b
        return list(map(both.__getitem__, where))

    return _Tracked(
        joined(tracked.keys, new.keys),
        joined(tracked.ints, new.ints),
        joined(tracked.ids, new.ids),
        joined(tracked.tags, new.tags),
        {w: joined(r, new.ranks[w]) for w, r in tracked.ranks.items()},
    )


def _discard(index: dict[Any, set[UUID]], key: Any, job_id: UUID) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(job_id)
        if not ids:
            del index[key]
