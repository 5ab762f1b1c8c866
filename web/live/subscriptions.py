"""What each socket follows, and the routing tables the fan-out looks events up in.

A subscription remembers the last seq it delivered (`delivered`), so nothing is sent twice;
while it replays, live events wait in `pending` and are joined after the replay without a gap
or a duplicate. `tracked` is what the client was last told about each queued job, so position
messages go only where something changed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from queueing.states import JobStatus

from .outbox import Client
from .wire import Event

PENDING_LIMIT = 10_000  # live events held for a replaying subscription before it replays again


@dataclass(eq=False)
class Subscription:
    """What one socket follows: a conversation, or a set of jobs."""

    client: Client
    conversation_id: UUID | None
    job_ids: frozenset[UUID]
    delivered: int  # events with seq <= delivered are never sent again
    live: bool  # False while replaying: live events wait in `pending`
    needs_replay: bool = False
    pending: deque[Event] = field(default_factory=deque)
    # Queued jobs this client knows about, with the (position, ETA bucket) it last got.
    tracked: dict[UUID, tuple[int, int | None]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        if self.conversation_id is not None:
            return {"conversation_id": str(self.conversation_id)}
        return {"job_ids": sorted(str(j) for j in self.job_ids)}

    def apply(self, event: Event) -> None:
        """Note an event as sent: its seq, and whether its job is still one to track."""
        seq, job_id, status, queue_position, _ = event
        self.delivered = seq
        if status == JobStatus.QUEUED:
            self.tracked[job_id] = (queue_position, None)
        else:
            self.tracked.pop(job_id, None)

    def deliver(self, event: Event) -> None:
        """A live event: sent now, or held in `pending` while the subscription replays."""
        if self.client.closed or event[0] <= self.delivered:
            return
        if not self.live:
            if len(self.pending) >= PENDING_LIMIT:
                self.pending.clear()  # the table has them all: the replay reads them again
                self.needs_replay = True
            self.pending.append(event)
            return
        self.apply(event)
        self.client.offer(event[4])


class Subscriptions:
    """Every subscription of this process, indexed by conversation and by job id."""

    def __init__(self) -> None:
        self.all: set[Subscription] = set()
        self.by_conversation: dict[UUID, set[Subscription]] = {}
        self.by_job: dict[UUID, set[Subscription]] = {}

    def add(self, sub: Subscription) -> None:
        sub.client.subscription = sub
        self.all.add(sub)
        if sub.conversation_id is not None:
            self.by_conversation.setdefault(sub.conversation_id, set()).add(sub)
        for job_id in sub.job_ids:
            self.by_job.setdefault(job_id, set()).add(sub)

    def remove(self, client: Client) -> bool:
        """Forget the client's subscription; False when it had none."""
        sub = client.subscription
        if sub is None:
            return False
        client.subscription = None
        self.all.discard(sub)
        if sub.conversation_id is not None:
            _discard(self.by_conversation, sub.conversation_id, sub)
        for job_id in sub.job_ids:
            _discard(self.by_job, job_id, sub)
        return True

    def following(self, conversation_id: UUID, job_id: UUID) -> list[Subscription]:
        """The subscriptions an event of this job reaches (one that follows both, twice)."""
        return [*self.by_conversation.get(conversation_id, ()), *self.by_job.get(job_id, ())]

    def deepest_tracked(self) -> int:
        """The furthest queue position any client was told about (0 when none)."""
        return max((pos for s in self.all for pos, _ in s.tracked.values()), default=0)


def _discard(index: dict[UUID, set[Subscription]], key: UUID, sub: Subscription) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]
