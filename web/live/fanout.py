"""The NOTIFY-driven loop: one LISTEN connection per web process, and nothing lost.

NOTIFY only wakes us (its payload is a job id); the job_events table is the truth. A burst of
notifications sets a flag, and one task then reads every event after `last_seq` once for all
sockets, applies it to the queue order (web/live/placing.py: a queued event's position is the
rank it gives), routes each to the subscribers of its conversation or job (its JSON serialised
once, the same str sent to every socket), and advances `last_seq`. When an event may have moved
a followed job, every followed queued job's place comes from the queue order (no SQL; its
Following moves the places of the pass before by what changed since), and a `position`
message goes only where a position (or the ETA's bucket) changed. Seq is global and
commit-ordered, so several web processes each doing this agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import chain
from uuid import UUID

import psycopg
from psycopg_pool import PoolTimeout

from queueing import db, events
from queueing.cancellation import cancel_and_wait
from queueing.listener import CHANNEL_DELETED, CHANNEL_EVENT, CHANNEL_PROGRESS, Listener
from queueing.positions import EtaCache
from queueing.rows import EventRow
from queueing.states import FINAL, JobStatus

from ..image_links import ImageLinks
from .placing import Placing
from .stats import FanoutStats
from .subscriptions import Subscriptions
from .waiters import CancelWaiters
from .wire import eta_bucket, event_of, position_message, preview_message, progress_message

log = logging.getLogger(__name__)

PAGE = 1000  # events per read, for the live pump and for replays
POSITIONS_MIN_INTERVAL_S = 0.1  # position passes run at most 10 times a second ...
POSITIONS_MAX_SHARE = 0.25  # ... and take at most about a quarter of the time
_MOVES_OTHERS = (JobStatus.PROCESSING, JobStatus.CANCELED)
# A GPU took or ended a job (or a queued one left): what the ETA model knows of its model's GPUs
# and users' backlogs is out of date.
_OUTDATES_ETA = frozenset({JobStatus.PROCESSING, *FINAL})


class Fanout:
    def __init__(
        self,
        pool: db.Pool,
        url: str,
        subscriptions: Subscriptions,
        waiters: CancelWaiters,
        stats: FanoutStats,
        *,
        eta_cache: EtaCache,
        image_links: ImageLinks,
        poll_interval_s: float,
    ) -> None:
        self._pool = pool
        self._subs = subscriptions
        self._waiters = waiters
        self._stats = stats
        self._eta = eta_cache
        self._links = image_links
        self._poll_interval_s = poll_interval_s
        self.listener = Listener(
            url,
            (CHANNEL_EVENT, CHANNEL_PROGRESS, CHANNEL_DELETED),
            self._on_notify,
            on_connect=self._on_connect,
            app="gpuqueue-web-listen",
        )
        self.last_seq = 0
        self.placing = Placing(pool)
        self._wake = asyncio.Event()
        self._events_due = False
        self._progress_due: set[UUID] = set()
        self._positions_due = False
        self._deletions_due = False
        self._last_positions = 0.0
        self._positions_interval_s = POSITIONS_MIN_INTERVAL_S
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.last_seq = await self.placing.load()
        self._tasks = [
            asyncio.create_task(self._listen(), name="gpuqueue-listen"),
            asyncio.create_task(self._run(), name="gpuqueue-fanout"),
            asyncio.create_task(self.placing.sequencer.sweep(), name="gpuqueue-sequencer-sweep"),
        ]
        try:
            async with asyncio.timeout(10):
                await self.listener.connected.wait()
        except TimeoutError:
            log.warning("the LISTEN connection is not up yet; live updates start once it is")

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    # -- notifications ------------------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel in (CHANNEL_PROGRESS, CHANNEL_DELETED):
            try:
                about = UUID(payload)
            except ValueError:
                log.warning("ignoring a %s notification with payload %r", channel, payload[:80])
                return
            if channel == CHANNEL_PROGRESS:
                self._progress_due.add(about)
            elif self.placing.forget_conversation(about):
                self._positions_due = True  # the jobs behind its queued ones moved up
        else:
            self._events_due = True
        self._wake.set()

    def _on_connect(self) -> None:
        # Whatever was committed while we were not listening is in the table: catch up (and
        # a conversation deleted meanwhile took its events with it: look for those).
        self._events_due = self._deletions_due = True
        self._wake.set()

    async def _listen(self) -> None:
        while True:
            try:
                await self.listener.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the LISTEN task failed; restarting it")
                await asyncio.sleep(1.0)

    async def _run(self) -> None:
        """One task does every read, so a burst of notifications costs a handful of queries."""
        backoff = 0.05
        while True:
            timeout, polling = self._poll_interval_s, True
            if self._positions_due:
                since = time.monotonic() - self._last_positions
                deferred = max(0.0, self._positions_interval_s - since)
                if deferred < timeout:
                    timeout, polling = deferred, False
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                if polling:
                    self._events_due = True  # the safety net: a poll now and then
            self._wake.clear()
            try:
                await self._tick()
                backoff = 0.05
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                log.warning("fan-out read failed (%s); retrying in %.2f s", exc, backoff)
                self._events_due = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                log.exception("fan-out step failed; retrying")
                self._events_due = True
                await asyncio.sleep(1.0)

    async def _tick(self) -> None:
        if self._deletions_due:
            self._deletions_due = False
            if await self.placing.forget_deleted_conversations():
                self._positions_due = True
        while self._events_due:
            self._events_due = False
            if await self._pump_events():
                self._positions_due = True
        if self._progress_due:
            ids, self._progress_due = self._progress_due, set()
            await self._send_progress(ids)
        if self._positions_due:
            now = time.monotonic()
            if now - self._last_positions >= self._positions_interval_s:
                self._positions_due = False
                self._last_positions = now
                await self._refresh_positions()
                # A big queue makes a pass costly: space passes out so they stay a small share.
                took = time.monotonic() - now
                self._positions_interval_s = max(
                    POSITIONS_MIN_INTERVAL_S, took / POSITIONS_MAX_SHARE
                )

    # -- events -------------------------------------------------------------------------------

    async def _pump_events(self) -> bool:
        """Route every event after last_seq; True when one of them may move a followed job."""
        moved = False
        while True:
            rows = await events.events_after(self._pool, self.last_seq, limit=PAGE)
            if rows:
                await self.placing.follow(rows)
                if any(row["event"]["status"] in _OUTDATES_ETA for row in rows):
                    self._eta.outdated()
                moved = self._route(rows) or moved
            if len(rows) < PAGE:
                return moved

    def _may_move_followed_jobs(self, rows: list[EventRow]) -> bool:
        """Whether these events can change a followed queued job's position.

        A job leaving the queue (processing, canceled) moves those behind it; a job entering it
        moves those at or behind its position; complete and error come from processing and move
        no one. New jobs at the tail, the common case, so cost no positions pass.
        """
        deepest: int | None = None
        for row in rows:
            event = row["event"]
            if event["status"] in _MOVES_OTHERS:
                return True
            if event["status"] == JobStatus.QUEUED:
                if deepest is None:
                    deepest = self._subs.deepest_tracked()
                if event["queue_position"] <= deepest:
                    return True
        return False

    def _route(self, rows: list[EventRow]) -> bool:
        moved = self._may_move_followed_jobs(rows)
        by_conversation, by_job, waiters = (
            self._subs.by_conversation,
            self._subs.by_job,
            self._waiters,
        )
        for row in rows:
            job_id = row["job_id"]
            in_conversation = by_conversation.get(row["conversation_id"])
            of_job = by_job.get(job_id)
            if in_conversation or of_job:
                event = event_of(row, self._links)  # serialised once for every socket
                self._stats.events_routed += 1
                self._stats.deliveries.routing(event[4], row["event"]["at"])
                for sub in in_conversation or ():
                    sub.deliver(event)
                for sub in of_job or ():
                    sub.deliver(event)
            if waiters and row["event"]["status"] in FINAL:
                waiters.ended(job_id)
            self._stats.deliveries.routed(row["event"])
            self.last_seq = row["seq"]
        return moved

    async def _send_progress(self, job_ids: set[UUID]) -> None:
        if not self._subs.all:
            return
        for row in await events.progress_of(self._pool, job_ids):
            job_id, preview = row["job_id"], row["preview"]
            texts: list[str] | None = None
            for sub in self._subs.following(row["conversation_id"], job_id):
                if sub.live:
                    if texts is None:
                        texts = [progress_message(job_id, row["progress"])]
                        if preview is not None:  # stored with this step: sent once, first
                            texts.insert(0, preview_message(job_id, preview))
                    sub.client.offer(texts[0] if len(texts) == 1 else texts)

    async def _refresh_positions(self) -> None:
        """Positions of every followed queued job from the queue order's Following (one pass
        for all of them, its ranks kept from the pass before); messages only where they moved."""
        subs = [s for s in self._subs.all if s.live and s.tracked and not s.client.closed]
        if not subs:
            return
        self._stats.position_passes += 1
        model = await self._eta.get(self._pool, max_age_s=0.25)
        passed = self.placing.order.following().places(
            chain.from_iterable(sub.tracked for sub in subs)
        )
        # Each job's state is computed once; sockets only compare it with what they last got.
        current: dict[UUID, tuple[tuple[int, int | None], float | None]] = {}
        for group in passed:
            for job_id, position, work_ahead, start_tag in zip(
                group.job_ids, group.positions, group.work_ahead, group.start_tags, strict=True
            ):
                eta = model.eta_s(group.model, position, work_ahead, start_tag)
                current[job_id] = ((position, eta_bucket(eta)), eta)
        texts: dict[UUID, str] = {}
        for sub in subs:
            if sub.client.closed or sub.client.subscription is not sub:
                continue
            batch: list[str] = []
            tracked = sub.tracked
            for job_id, last in tracked.items():
                state = current.get(job_id)
                if state is None or state[0] == last:
                    continue  # unchanged, or no longer queued (its event is on the way)
                tracked[job_id] = state[0]
                text = texts.get(job_id)
                if text is None:
                    text = texts[job_id] = position_message(job_id, state[0][0], state[1])
                batch.append(text)
            if batch:
                sub.client.offer(batch[0] if len(batch) == 1 else batch)
