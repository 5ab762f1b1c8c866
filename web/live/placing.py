"""Places from the log: this web process's queue order, kept in step with the events it routes.

The fan-out reads every event in seq order anyway; before routing a page of them it passes it
here, so the order (queueing/queue_order.py) is exactly the queue after the newest routed event,
and a queued event's `queue_position` is filled in from it: the rank the job had at that seq.
gq_enqueue's place and sequence modes leave that position NULL in the table (counting it there
would be O(jobs ahead) under the event lock); the first web process to route the event writes it
back, and the request that enqueued the job waits for that (`placed`), so its answer, the event
and the message all hold the same position. Every process applies the same log in the same
order, so they all agree on every rank.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, cast
from uuid import UUID

from queueing import db
from queueing.queue_order import Keys, Place, QueueOrder
from queueing.rows import EventRow
from queueing.sequencer import Sequencer
from queueing.states import JobStatus

log = logging.getLogger(__name__)

PLACED_TIMEOUT_S = 5.0  # an enqueue waits this long for its place, then counts it in SQL
RECENT = 10_000  # queued events whose places are kept after they were followed


def _keys(row: dict[str, Any] | EventRow, model: str) -> Keys | None:
    r = cast("dict[str, Any]", row)
    if r["user_id"] is None:
        return None  # the job row is gone (its conversation deleted)
    return Keys(
        job_id=r["job_id"],
        conversation_id=r["conversation_id"],
        model=model,
        user_id=r["user_id"],
        priority=r["priority"],
        start_tag=r["start_tag"],
        queue_seq=r["queue_seq"],
        work=r["work"],
    )


class Placing:
    """The queue order, its loading and following of the log, and the enqueues waiting on it."""

    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool
        self.sequencer = Sequencer(pool)
        self.order = QueueOrder()
        self.seq = 0  # the order is the queue right after this event
        self._settled = 0  # every queued event up to this seq is placed and written back
        self._waiting: dict[int, asyncio.Future[None]] = {}
        # The places of the latest queued events followed, for enqueues that ask after the fact.
        self._recent: OrderedDict[int, Place | None] = OrderedDict()
        # Conversations deleted lately (their events went with them), oldest first.
        self._deleted: OrderedDict[UUID, None] = OrderedDict()

    async def load(self) -> int:
        """Read every queued job's keys and the seq they are the state after; returns it."""
        row = await db.fetch_one(self._pool, "queue_order_load")
        assert row is not None
        self.order.load(
            Keys(UUID(j[0]), UUID(j[1]), j[2], j[3], j[4], j[5], j[6], j[7]) for j in row["jobs"]
        )
        self.seq = row["seq"]
        self._settle()
        return self.seq

    async def follow(self, rows: list[EventRow]) -> None:
        """Apply a page of events in seq order, filling in each queued event's position; then
        write back the positions the table lacks and answer the enqueues waiting on them.

        A page that fails (a read or the write-back) is passed again: events already applied
        (seq <= self.seq) are not applied twice, and take the place they had then."""
        unplaced_seqs: list[int] = []
        unplaced_positions: list[int] = []
        for row in rows:
            event = row["event"]
            job_id, status, seq = row["job_id"], event["status"], row["seq"]
            if seq > self.seq:
                keys = _keys(row, event["model"])
                if keys is not None and keys.conversation_id in self._deleted:
                    keys = None  # read just before its conversation's delete: gone now
                if status == JobStatus.QUEUED and keys is not None and self.order.is_queued(job_id):
                    # Queued while queued: a move to the front, which rotated that user's keys.
                    await self._reread_user(keys)
                else:
                    self.order.apply(status, job_id, keys)
                self.seq = seq
                if status == JobStatus.QUEUED:
                    self._recent[seq] = self.order.place(job_id)
            if status != JobStatus.QUEUED:
                continue
            place = self._place_at(seq, job_id)
            if event["queue_position"] is None:
                position = 0 if place is None else place.queue_position
                event["queue_position"] = position
                unplaced_seqs.append(seq)
                unplaced_positions.append(position)
        if unplaced_seqs:
            await db.fetch_one(
                self._pool,
                "job_record_place",
                {"seqs": unplaced_seqs, "positions": unplaced_positions},
            )
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        self._settle()

    def _settle(self) -> None:
        """Every event up to self.seq is followed and placed: answer whoever waits for one."""
        self._settled = self.seq
        for seq in [s for s in self._waiting if s <= self._settled]:
            waiter = self._waiting.pop(seq)
            if not waiter.done():
                waiter.set_result(None)

    def place(self, job_id: UUID) -> Place | None:
        return self.order.place(job_id)

    def forget_conversation(self, conversation_id: UUID) -> bool:
        """The conversation was deleted, its jobs' events with it: its queued jobs leave the
        order now (and a page of the log read just before is not applied to them). True when
        it held some."""
        self._deleted[conversation_id] = None
        while len(self._deleted) > RECENT:
            self._deleted.popitem(last=False)
        gone = self.order.in_conversation(conversation_id)
        for job_id in gone:
            self.order.remove(job_id)
        return bool(gone)

    async def forget_deleted_conversations(self) -> bool:
        """After notifications may have been missed: forget the conversations that no longer
        exist (one read of the conversations the order holds jobs of)."""
        held = list(self.order.conversations())
        if not held:
            return False
        rows = await db.fetch_all(self._pool, "conversations_gone", {"ids": held})
        forgot = [self.forget_conversation(r["conversation_id"]) for r in rows]
        return any(forgot)

    def fill(self, row: EventRow) -> None:
        """A stored queued event read again (a replay, of an event followed already) whose place
        is not written back yet: the place it had; for one older than this process (never
        written back: the process that placed it died), its place now, or 0."""
        event = row["event"]
        if event["status"] == JobStatus.QUEUED and event["queue_position"] is None:
            seq = row["seq"]
            place = self._place_at(seq, row["job_id"])
            event["queue_position"] = 0 if place is None else place.queue_position

    async def placed(self, seq: int, job_id: UUID) -> Place | None:
        """The job's place at its queued event `seq`, once followed and written back."""
        if not await self.reached(seq):
            log.warning("job %s not placed within %.0f s; counting it", job_id, PLACED_TIMEOUT_S)
            return None
        return self._recent.get(seq)

    async def reached(self, seq: int) -> bool:
        """Wait until every event up to `seq` is followed and its place written back (a read
        that saw the database at `seq` then shows places of that state or a later one); False
        when that did not happen within PLACED_TIMEOUT_S."""
        if seq <= self._settled:
            return True
        waiter = self._waiting.get(seq)
        if waiter is None:
            waiter = self._waiting[seq] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(PLACED_TIMEOUT_S):
                await asyncio.shield(waiter)
        except TimeoutError:
            return False
        return True

    def _place_at(self, seq: int, job_id: UUID) -> Place | None:
        """The place the job took at its queued event `seq` while that is still known, else
        (an event older than the window, or than this process) its place now."""
        return self._recent[seq] if seq in self._recent else self.order.place(job_id)

    async def _reread_user(self, keys: Keys) -> None:
        rows = await db.fetch_all(
            self._pool, "queue_order_of_user", {"user_id": keys.user_id, "model": keys.model}
        )
        self.order.replace_user(
            keys.user_id, keys.model, (cast(Keys, _keys(r, r["model"])) for r in rows)
        )
