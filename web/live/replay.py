"""Subscribing: the stored events after since_seq, then the current positions, then live.

A replay reads job_events while live events for the subscription wait in its `pending`; the
two are joined without a gap or a duplicate, and the subscription goes live in the same step
that finds nothing left. The positions come from the fan-out's queue order, so they are exactly
the queue after the newest event routed, all of which the subscription has been sent; a
since_seq past what this process has routed (the client saw it on another web process) waits
for the fan-out to get there first.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from queueing import db, events
from queueing.positions import EtaCache

from ..image_links import ImageLinks
from .fanout import PAGE, Fanout
from .outbox import Client
from .stats import FanoutStats
from .subscriptions import Subscription, Subscriptions
from .wire import eta_bucket, event_of, position_message, subscribed_message


class FanoutBehind(Exception):
    """This process's fan-out did not follow the log up to a subscriber's since_seq in time
    (PLACED_TIMEOUT_S): its positions would be older than what the client has seen."""

    def __init__(self, since_seq: int, routed_seq: int) -> None:
        super().__init__(f"since_seq {since_seq} is past the {routed_seq} this server has routed")


class Replayer:
    def __init__(
        self,
        pool: db.Pool,
        subscriptions: Subscriptions,
        fanout: Fanout,
        stats: FanoutStats,
        *,
        eta_cache: EtaCache,
        image_links: ImageLinks,
    ) -> None:
        self._pool = pool
        self._subs = subscriptions
        self._fanout = fanout
        self._stats = stats
        self._eta = eta_cache
        self._links = image_links

    async def subscribe(
        self,
        client: Client,
        *,
        conversation_id: UUID | None,
        job_ids: Iterable[UUID],
        since_seq: int | None,
    ) -> Subscription:
        """Replay (with since_seq), then positions, then {"type": "subscribed", "seq"}: every
        event of the subscription up to that seq has been sent, so it is the next since_seq."""
        self._subs.remove(client)
        if since_seq is not None:
            since_seq = min(since_seq, await events.last_seq(self._pool))
            # The client may have seen events this process has not followed yet (on another
            # web process): the replay and the positions must not come from an older state.
            if not await self._fanout.placing.reached(since_seq):
                raise FanoutBehind(since_seq, self._fanout.last_seq)
        sub = Subscription(
            client=client,
            conversation_id=conversation_id,
            job_ids=frozenset(job_ids),
            delivered=self._fanout.last_seq if since_seq is None else since_seq,
            live=since_seq is None,
            needs_replay=since_seq is not None,
        )
        self._subs.add(sub)
        if not sub.live:
            self._stats.replays += 1
            await self._replay(sub)
        batch = await self._positions_snapshot(sub)
        batch.append(subscribed_message(sub.describe(), sub.delivered))
        client.offer(batch)
        return sub

    async def _replay(self, sub: Subscription) -> None:
        """Stored events after sub.delivered, then the live ones that arrived meanwhile; the
        subscription goes live in the same step that finds nothing left (no await between)."""
        conversation_ids = None if sub.conversation_id is None else [sub.conversation_id]
        job_ids = sorted(sub.job_ids) if sub.job_ids else None
        while True:
            while sub.needs_replay:
                sub.needs_replay = False
                while True:
                    # Only what the fan-out has routed (and so placed); later events reach
                    # the subscription live, through `pending`.
                    rows = await events.events_after(
                        self._pool,
                        sub.delivered,
                        conversation_ids=conversation_ids,
                        job_ids=job_ids,
                        until=self._fanout.last_seq,
                        limit=PAGE,
                    )
                    batch = []
                    for row in rows:
                        if row["seq"] > sub.delivered:
                            self._fanout.placing.fill(row)
                            event = event_of(row, self._links)
                            sub.apply(event)
                            batch.append(event[4])
                    if batch:
                        await sub.client.send(batch)
                    if len(rows) < PAGE:
                        break
            if sub.pending and not sub.needs_replay:
                batch = []
                while sub.pending:
                    event = sub.pending.popleft()
                    if event[0] > sub.delivered:
                        sub.apply(event)
                        batch.append(event[4])
                if batch:
                    await sub.client.send(batch)
                continue
            if not sub.needs_replay and not sub.pending:
                sub.live = True
                return

    async def _positions_snapshot(self, sub: Subscription) -> list[str]:
        """A position message for each queued job of the subscription, from the queue order:
        placed with no await in between, so it is the queue right after the newest event routed,
        and every event up to that one has been sent to the subscription already (a job queued
        while the ETA is read reaches it by its own event)."""
        order = self._fanout.placing.order
        followed = set(sub.job_ids)
        if sub.conversation_id is not None:
            followed |= order.in_conversation(sub.conversation_id)
        if not any(order.is_queued(job_id) for job_id in followed):
            return []
        model = await self._eta.get(self._pool)
        batch: list[str] = []
        for job_id, place in sorted(order.places(followed).items()):
            eta = model.eta_s(
                order.model_of(job_id), place.queue_position, place.work_ahead, place.start_tag
            )
            sub.tracked[job_id] = (place.queue_position, eta_bucket(eta))
            batch.append(position_message(job_id, place.queue_position, eta))
        return batch
