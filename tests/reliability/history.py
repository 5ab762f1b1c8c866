"""The queue's history, replayed from job_events, to judge what clients saw.

job_events rows are written under the event lock, so seq order is commit order: every snapshot
any statement ever took is "all events up to some seq s" (a *state*). Every change of a job's
status writes an event in the same transaction, and a job's model, priority, fair-share start tag
and queue_seq never change (no move to the front here), so the set of queued jobs and each one's
rank in its model's queue are a function of s. Replaying the log gives, for each job,
its status and rank at every state; a position anyone was shown can then be checked against the
ranks the job really had.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from queueing.states import FINAL, JobStatus

LEAVES_QUEUE = frozenset({JobStatus.PROCESSING, *FINAL})
INFINITY = 1 << 62

# Legal successors in the state machine (contract: job states; a retry or a lost worker takes
# processing back to queued).
NEXT: dict[str | None, frozenset[str]] = {
    None: frozenset({JobStatus.PENDING}),
    JobStatus.PENDING: frozenset({JobStatus.QUEUED}),
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.CANCELED}),
    JobStatus.PROCESSING: frozenset({JobStatus.QUEUED, *FINAL}),
    **{final: frozenset() for final in FINAL},
}


@dataclass(frozen=True)
class Event:
    seq: int
    job_id: UUID
    message_id: UUID
    conversation_id: UUID
    status: str
    queue_position: int
    at: datetime
    detail: Mapping[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        return cls(
            seq=row["seq"], job_id=row["job_id"], message_id=row["message_id"],
            conversation_id=row["conversation_id"], status=row["status"],
            queue_position=row["queue_position"], at=row["at"], detail=row["detail"] or {},
        )  # fmt: skip


Order = tuple[int, float, int, str]


@dataclass(frozen=True)
class JobKey:
    """What orders a model's queue: higher priority first, then the fair-share start tag, then
    queue_seq (first come)."""

    model: str
    priority: int
    start_tag: float
    queue_seq: int
    conversation_id: UUID

    @classmethod
    def from_row(cls, job: Mapping[str, Any]) -> JobKey:
        return cls(
            job["model"], job["priority"], job["start_tag"], job["queue_seq"],
            job["conversation_id"],
        )  # fmt: skip

    def order(self, job_id: UUID) -> Order:
        return (-self.priority, self.start_tag, self.queue_seq, str(job_id))


Intervals = list[tuple[int, int]]  # half-open [a, b) ranges of states


@dataclass
class History:
    """Per job: its events, status intervals and rank timeline over states (event seqs)."""

    events: list[Event]
    keys: dict[UUID, JobKey]
    by_job: dict[UUID, list[Event]] = field(default_factory=lambda: defaultdict(list))
    # job -> [(state, rank or 0 when not queued)] at each change, in state order
    ranks: dict[UUID, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    # queued events whose stored queue_position is no rank the job could have had
    bad_event_positions: list[tuple[Event, set[int]]] = field(default_factory=list)
    _by_time: tuple[list[datetime], list[int]] | None = None

    @classmethod
    def build(cls, events: Iterable[Event], keys: dict[UUID, JobKey]) -> History:
        ordered = sorted(events, key=lambda e: e.seq)
        history = cls(ordered, keys)
        history._replay()
        return history

    def _replay(self) -> None:
        # per model, the sorted claim-order keys of its queued jobs
        queues: dict[str, list[Order]] = defaultdict(list)
        job_of: dict[Order, UUID] = {}
        rank: dict[UUID, int] = {}
        # Jobs between leaving the queue (or being created) and their next queued event: the
        # insertion ranks they would have had at each state, which a queued event's stored
        # position (computed in its transaction, possibly before it took the event lock) must
        # be one of.
        windows: dict[UUID, set[int]] = {}
        for event in self.events:
            job = event.job_id
            self.by_job[job].append(event)
            key = self.keys[job].order(job)
            queue = queues[self.keys[job].model]
            changed_from: int | None = None
            if event.status == "queued":
                allowed = windows.pop(job, set())
                if event.queue_position not in allowed:
                    self.bad_event_positions.append((event, allowed))
                index = bisect.bisect_left(queue, key)
                queue.insert(index, key)
                job_of[key] = job
                changed_from = index
            elif event.status in LEAVES_QUEUE and rank.get(job):
                index = bisect.bisect_left(queue, key)
                del queue[index]
                del job_of[key]
                rank[job] = 0
                self.ranks[job].append((event.seq, 0))
                changed_from = index
            if changed_from is not None:
                for i in range(changed_from, len(queue)):
                    other = job_of[queue[i]]
                    if rank.get(other) != i + 1:
                        rank[other] = i + 1
                        self.ranks[other].append((event.seq, i + 1))
            if event.status in (JobStatus.PENDING, JobStatus.PROCESSING):
                windows[job] = set()
            elif event.status in FINAL:
                windows.pop(job, None)
            for waiting, seen in windows.items():
                waiting_key = self.keys[waiting]
                seen.add(
                    bisect.bisect_left(queues[waiting_key.model], waiting_key.order(waiting)) + 1
                )

    # -- reading it back ----------------------------------------------------------------------

    def rank_at(self, job: UUID, state: int) -> int:
        """The job's rank at a state (0 when not queued)."""
        timeline = self.ranks.get(job, [])
        i = bisect.bisect_right(timeline, (state, INFINITY)) - 1
        return timeline[i][1] if i >= 0 else 0

    def ranks_between(self, job: UUID, low: int, high: int) -> set[int]:
        """Every rank the job held while queued at a state from `low` to `high`."""
        timeline = self.ranks.get(job, [])
        found = {r for s, r in timeline if low < s <= high and r}
        current = self.rank_at(job, low)
        if current:
            found.add(current)
        return found

    def newest_state_by(self, when: datetime) -> int:
        """The newest state that can have been committed by `when`: a transaction's event time
        is taken before it commits, so an event whose time is later was not committed yet."""
        if self._by_time is None:
            ordered = sorted((e.at, e.seq) for e in self.events)
            newest, prefix = 0, []
            for _, seq in ordered:
                newest = max(newest, seq)
                prefix.append(newest)
            self._by_time = ([at for at, _ in ordered], prefix)
        times, prefix = self._by_time
        i = bisect.bisect_right(times, when)
        return prefix[i - 1] if i else 0

    def status_intervals(self, job: UUID, status: str) -> Intervals:
        """The states at which the job had this status."""
        events = self.by_job.get(job, [])
        spans: Intervals = []
        for i, event in enumerate(events):
            if event.status == status:
                end = events[i + 1].seq if i + 1 < len(events) else INFINITY
                spans.append((event.seq, end))
        return spans

    def rank_intervals(self, job: UUID, wanted: int) -> Intervals:
        timeline = self.ranks.get(job, [])
        spans: Intervals = []
        for i, (state, value) in enumerate(timeline):
            if value == wanted:
                end = timeline[i + 1][0] if i + 1 < len(timeline) else INFINITY
                spans.append((state, end))
        return spans

    def consistent_state(
        self, conversation_id: UUID, seen: Mapping[UUID, tuple[str, int]]
    ) -> Intervals:
        """The states at which a conversation's jobs were exactly `seen` (job -> (status,
        queue_position), every job of the conversation that existed then): empty when no
        committed state ever looked like that."""
        spans: Intervals = [(0, INFINITY)]
        for job, (status, position) in seen.items():
            if job not in self.by_job:
                return []
            mine = self.status_intervals(job, status)
            if status == "queued":
                mine = intersect(mine, self.rank_intervals(job, position))
            elif position != 0:
                return []
            spans = intersect(spans, mine)
            if not spans:
                return []
        for job, events in self.by_job.items():
            if job not in seen and self.keys[job].conversation_id == conversation_id:
                spans = intersect(spans, [(0, events[0].seq)])  # not created yet
        return spans


def intersect(a: Intervals, b: Intervals) -> Intervals:
    out: Intervals = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def illegal_transitions(history: History) -> list[str]:
    """Jobs whose event sequence is not a walk of the state machine ending in one final state."""
    problems = []
    for job, events in history.by_job.items():
        previous: str | None = None
        for event in events:
            if event.status not in NEXT[previous]:
                problems.append(f"job {job}: {previous} -> {event.status} at seq {event.seq}")
                break
            previous = event.status
        finals = [e.status for e in events if e.status in FINAL]
        if len(finals) != 1 or events[-1].status not in FINAL:
            problems.append(f"job {job}: ends {events[-1].status}, final events {finals}")
    return problems
