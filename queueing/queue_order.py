"""The queue's order in memory, exact at every seq: positions in O(log n), not O(queue).

A web process loads every queued job's sort keys once, in the same snapshot as the newest seq,
then applies the transition log in seq order (seq order is commit order), so after event s it
holds exactly the queue after s. A job's position is its rank among its model's queued jobs in
claim order, (priority DESC, start_tag, queue_seq), the order gq_lock_and_claim_batch takes.

The ETA also needs the work (megapixel-steps) of the jobs ahead. Jobs of one model come in a
handful of sizes, so each model keeps one sorted list per distinct work value: the rank is the
sum of the ranks in each list and the work ahead the sum of rank times work, both exact, in
O(sizes x log n).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple
from uuid import UUID

from sortedcontainers import SortedList

from .states import JobStatus

# Claim order: higher priority first, then the fair-share start tag, then arrival.
Key = tuple[int, float, int]  # (-priority, start_tag, queue_seq)


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
        return (-self.priority, self.start_tag, self.queue_seq)


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

    def place(self, key: Key) -> Place:
        position, work_ahead = 1, 0.0
        for work, lst in self.by_work.items():
            ahead = lst.bisect_left(key)
            position += ahead
            work_ahead += ahead * work
        return Place(position, work_ahead, key[1])

    def walk(self, wanted: dict[Key, UUID]) -> Iterator[tuple[UUID, Place]]:
        """The places of the wanted keys, from one merged pass over the lists in claim order."""
        position, work_ahead = 1, 0.0
        runs = [zip(lst, repeat(work)) for work, lst in self.by_work.items()]
        for key, work in heapq.merge(*runs):
            job_id = wanted.get(key)
            if job_id is not None:
                yield job_id, Place(position, work_ahead, key[1])
            position += 1
            work_ahead += work

    def __len__(self) -> int:
        return sum(len(lst) for lst in self.by_work.values())


# A pass that wants at least 1/WALK_SHARE of a model's queue walks it instead of ranking each.
WALK_SHARE = 8

_LEAVES = frozenset({JobStatus.PROCESSING, JobStatus.CANCELED, JobStatus.COMPLETE, JobStatus.ERROR})


class QueueOrder:
    """Every queued job of every model, in claim order."""

    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}
        self._jobs: dict[UUID, Keys] = {}
        self._of_user: dict[tuple[int, str], set[UUID]] = {}
        self._of_conversation: dict[UUID, set[UUID]] = {}

    def load(self, queued: Iterable[Keys]) -> None:
        """Start from a snapshot of the queued jobs (replacing whatever was held)."""
        self._models, self._jobs, self._of_user, self._of_conversation = {}, {}, {}, {}
        for keys in queued:
            self._add(keys)

    def queued(self, keys: Keys) -> None:
        """A queued event: the job enters the queue, or (a move, a retry) takes new keys."""
        self.remove(keys.job_id)
        self._add(keys)

    def remove(self, job_id: UUID) -> None:
        """The job left the queue (or is gone): nothing when it was not in it."""
        old = self._jobs.pop(job_id, None)
        if old is not None:
            self._models[old.model].remove(old.key, old.work)
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
        keys = self._jobs.get(job_id)
        if keys is None:
            return None
        return self._models[keys.model].place(keys.key)

    def places(self, job_ids: Iterable[UUID]) -> dict[UUID, Place]:
        """The places of many jobs (those queued): a rank lookup each while they are few of
        their model's queue, one walk of it in claim order once they are many (a position
        pass that follows most of a big queue stays O(n), not O(n log n))."""
        wanted: dict[str, dict[Key, UUID]] = {}
        for job_id in job_ids:
            keys = self._jobs.get(job_id)
            if keys is not None:
                wanted.setdefault(keys.model, {})[keys.key] = job_id
        out: dict[UUID, Place] = {}
        for model, of_model in wanted.items():
            order = self._models[model]
            if len(of_model) * WALK_SHARE < len(order):
                out.update((job_id, order.place(key)) for key, job_id in of_model.items())
            else:
                out.update(order.walk(of_model))
        return out

    def model_of(self, job_id: UUID) -> str:
        """A queued job's model (KeyError when it is not queued)."""
        return self._jobs[job_id].model

    def conversations(self) -> frozenset[UUID]:
        """The conversations that have queued jobs."""
        return frozenset(self._of_conversation)

    def in_conversation(self, conversation_id: UUID) -> frozenset[UUID]:
        """The conversation's queued jobs."""
        return frozenset(self._of_conversation.get(conversation_id, ()))

    def is_queued(self, job_id: UUID) -> bool:
        return job_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def _add(self, keys: Keys) -> None:
        order = self._models.get(keys.model)
        if order is None:
            order = self._models[keys.model] = _Model()
        order.add(keys.key, keys.work)
        self._jobs[keys.job_id] = keys
        self._of_user.setdefault((keys.user_id, keys.model), set()).add(keys.job_id)
        self._of_conversation.setdefault(keys.conversation_id, set()).add(keys.job_id)


def _discard(index: dict[Any, set[UUID]], key: Any, job_id: UUID) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(job_id)
        if not ids:
            del index[key]
