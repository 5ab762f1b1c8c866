"""The WebSocket fan-out: one LISTEN connection per web process, and nothing lost.

NOTIFY only wakes us (its payload is a job id); the job_events table is the truth. A burst of
notifications sets a flag, and one task then reads every event after `last_seq` once for all
sockets, routes each to the subscribers of its conversation or job (its JSON serialised once,
the same str sent to every socket), and advances `last_seq`. When any event happened the queue
order may have changed, so positions are read once for every queued job some socket follows,
and a `position` message goes only where a position (or the ETA's bucket) changed.

Each socket has a bounded outbox drained by its own sender task, so a slow client never delays
the others; one whose outbox overflows is closed (4008) and catches up with `since_seq` when it
reconnects. A subscription remembers the last seq it delivered (`delivered`): a replay sends
stored events after `since_seq` while live events wait in `pending`, then the two are joined
without a gap or a duplicate. Seq is global and commit-ordered, so several web processes each
doing this agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from uuid import UUID

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from queueing import db, events, positions
from queueing.cancellation import cancel_and_wait
from queueing.listener import CHANNEL_EVENT, CHANNEL_PROGRESS, Listener
from queueing.positions import EtaCache

from .image_links import ImageLinks

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"complete", "error", "canceled"})
PAGE = 1000  # events per read, for the live pump and for replays
PENDING_LIMIT = 10_000  # live events held for a replaying subscription before it replays again
POSITIONS_MIN_INTERVAL_S = 0.1  # position passes run at most 10 times a second ...
POSITIONS_MAX_SHARE = 0.25  # ... and take at most about a quarter of the time
CLOSE_TOO_SLOW = 4008
CLOSE_UNAUTHORIZED = 4401

# seq, job_id, status, queue_position, the event's JSON text
Event: TypeAlias = tuple[int, UUID, str, int, str]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def eta_bucket(eta_s: float | None) -> int | None:
    """ETAs are re-sent only when they move by a noticeable step, not at every tenth of a second."""
    if eta_s is None:
        return None
    step = 1 if eta_s < 10 else 5 if eta_s < 120 else 30 if eta_s < 1200 else 300
    return int(eta_s // step) * step


def position_message(job_id: UUID, queue_position: int, eta_s: float | None) -> str:
    message = {"type": "position", "job_id": str(job_id), "queue_position": queue_position}
    return dumps({**message, "eta_s": eta_s})


def error_message(code: str, message: str) -> str:
    return dumps({"type": "error", "error": {"code": code, "message": message}})


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


Outgoing: TypeAlias = str | list[str] | _Close


@dataclass
class FanoutStats:
    """Counters for operators and tests."""

    events_routed: int = 0
    position_passes: int = 0
    replays: int = 0
    clients_dropped: int = 0  # closed because their outbox overflowed


class ClientGone(Exception):
    """The socket was closed while something was being queued for it."""


class Client:
    """One WebSocket: a bounded outbox drained by its own sender task, and its subscription.

    Only the sender task writes to the socket, and only the handler task reads it.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        outbox_size: int,
        stats: FanoutStats | None = None,
    ) -> None:
        self.ws = ws
        self.stats = stats or FanoutStats()
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue(outbox_size)
        self.subscription: Subscription | None = None
        self.closed = False
        self.close_code: int | None = None
        self.transport = transport
        self._sender = asyncio.create_task(self._send_loop())
        self._closer: asyncio.Task[None] | None = None

    def offer(self, item: Outgoing) -> None:
        """Queue without waiting. A full outbox means this client cannot keep up: it is closed,
        and catches up with since_seq when it comes back."""
        if self.closed:
            return
        try:
            self.outbox.put_nowait(item)
        except asyncio.QueueFull:
            log.info("closing a WebSocket whose outbox is full (%d)", self.outbox.maxsize)
            self.stats.clients_dropped += 1
            self.kill(CLOSE_TOO_SLOW, "too slow: reconnect and subscribe with since_seq")

    async def send(self, item: str | list[str]) -> None:
        """Queue, waiting for room: only this socket's own handler waits here (replays)."""
        if self.closed:
            raise ClientGone
        await self.outbox.put(item)
        if self.closed:
            raise ClientGone

    def close(self, code: int, reason: str) -> None:
        """Close once everything queued before has been sent."""
        if not self.closed:
            self.offer(_Close(code, reason))

    def kill(self, code: int, reason: str) -> None:
        """Close now, dropping what is queued; the socket is aborted if the close cannot be sent."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._sender.cancel()
        while not self.outbox.empty():  # wakes a handler waiting in send()
            self.outbox.get_nowait()
        self._closer = asyncio.create_task(self._close_now(code, reason))

    async def wait_closed(self) -> None:
        if self._closer is not None:
            await asyncio.shield(self._closer)

    async def stop(self) -> None:
        """The handler is done with this socket: stop its tasks."""
        self.closed = True
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        if self._closer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._closer

    async def _send_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, str):
                    await ws.send_str(item)
                elif isinstance(item, list):
                    for text in item:
                        await ws.send_str(text)
                else:
                    self.closed = True
                    self.close_code = item.code
                    await ws.close(code=item.code, message=item.reason.encode())
                    return
        except ConnectionError:
            self.closed = True  # the peer went away; the handler's receive sees it too
        except Exception:
            log.exception("WebSocket sender failed")
            self.closed = True

    async def _close_now(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(1.0):
                await self.ws.close(code=code, message=reason.encode(), drain=False)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            transport = self.transport
            # A client that does not read leaves our buffer full: drop the connection instead.
            if isinstance(transport, asyncio.WriteTransport) and (
                transport.get_write_buffer_size() > 0 or not transport.is_closing()
            ):
                transport.abort()


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
    # While a positions snapshot is read: job id -> seq of events delivered meanwhile.
    recording: dict[UUID, int] | None = None

    def describe(self) -> dict[str, Any]:
        if self.conversation_id is not None:
            return {"conversation_id": str(self.conversation_id)}
        return {"job_ids": sorted(str(j) for j in self.job_ids)}


def _apply(sub: Subscription, event: Event) -> None:
    seq, job_id, status, queue_position, _ = event
    sub.delivered = seq
    if status == "queued":
        sub.tracked[job_id] = (queue_position, None)
    else:
        sub.tracked.pop(job_id, None)
    if sub.recording is not None:
        sub.recording[job_id] = seq


def _deliver(sub: Subscription, event: Event) -> None:
    if sub.client.closed or event[0] <= sub.delivered:
        return
    if not sub.live:
        if len(sub.pending) >= PENDING_LIMIT:
            sub.pending.clear()  # the table has them all: the replay reads them again
            sub.needs_replay = True
        sub.pending.append(event)
        return
    _apply(sub, event)
    sub.client.offer(event[4])


def _event_of(row: db.Row, links: ImageLinks) -> Event:
    event = links.sign(row["event"])
    return (row["seq"], row["job_id"], event["status"], event["queue_position"], dumps(event))


class Broadcaster:
    def __init__(
        self,
        pool: db.Pool,
        url: str,
        *,
        eta_cache: EtaCache,
        image_links: ImageLinks,
        outbox_size: int = 1000,
        poll_interval_s: float = 1.0,
    ) -> None:
        self._pool = pool
        self._eta = eta_cache
        self._links = image_links
        self.outbox_size = outbox_size
        self._poll_interval_s = poll_interval_s
        self.listener = Listener(
            url,
            (CHANNEL_EVENT, CHANNEL_PROGRESS),
            self._on_notify,
            on_connect=self._on_connect,
            app="gpuqueue-web-listen",
        )
        self.last_seq = 0
        self._subscriptions: set[Subscription] = set()
        self._by_conversation: dict[UUID, set[Subscription]] = {}
        self._by_job: dict[UUID, set[Subscription]] = {}
        self._watchers: dict[UUID, set[asyncio.Event]] = {}
        self._wake = asyncio.Event()
        self._events_due = False
        self._progress_due: set[UUID] = set()
        self._positions_due = False
        self._last_positions = 0.0
        self._positions_interval_s = POSITIONS_MIN_INTERVAL_S
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = FanoutStats()

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.last_seq = await events.last_seq(self._pool)
        self._tasks = [
            asyncio.create_task(self._listen(), name="gpuqueue-listen"),
            asyncio.create_task(self._run(), name="gpuqueue-fanout"),
        ]
        try:
            async with asyncio.timeout(10):
                await self.listener.connected.wait()
        except TimeoutError:
            log.warning("the LISTEN connection is not up yet; live updates start once it is")

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    def connect(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None) -> Client:
        return Client(ws, transport, self.outbox_size, self.stats)

    async def disconnect(self, client: Client) -> None:
        self.unsubscribe(client)
        await client.stop()

    def refuse_unauthorized(self, client: Client) -> None:
        """The socket's token stopped working: nothing more for it, an error frame, close 4401."""
        self.unsubscribe(client)
        client.offer(error_message("unauthorized", "the token was revoked or has expired"))
        client.close(CLOSE_UNAUTHORIZED, "unauthorized")

    # -- notifications ------------------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CHANNEL_PROGRESS:
            try:
                self._progress_due.add(UUID(payload))
            except ValueError:
                log.warning("ignoring a %s notification with payload %r", channel, payload[:80])
                return
        else:
            self._events_due = True
        self._wake.set()

    def _on_connect(self) -> None:
        # Whatever was committed while we were not listening is in the table: catch up.
        self._events_due = True
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
                moved = self._route(rows) or moved
            if len(rows) < PAGE:
                return moved

    def _may_move_followed_jobs(self, rows: list[db.Row]) -> bool:
        """Whether these events can change a followed queued job's position.

        A job leaving the queue (processing, canceled) moves those behind it; a job entering it
        moves those at or behind its position; complete and error come from processing and move
        no one. New jobs at the tail, the common case, so cost no positions pass.
        """
        deepest: int | None = None
        for row in rows:
            event = row["event"]
            if event["status"] in ("processing", "canceled"):
                return True
            if event["status"] == "queued":
                if deepest is None:
                    deepest = max(
                        (pos for s in self._subscriptions for pos, _ in s.tracked.values()),
                        default=0,
                    )
                if event["queue_position"] <= deepest:
                    return True
        return False

    def _route(self, rows: list[db.Row]) -> bool:
        moved = self._may_move_followed_jobs(rows)
        by_conversation, by_job, watchers = self._by_conversation, self._by_job, self._watchers
        for row in rows:
            job_id = row["job_id"]
            in_conversation = by_conversation.get(row["conversation_id"])
            of_job = by_job.get(job_id)
            if in_conversation or of_job:
                event = _event_of(row, self._links)  # serialised once for every socket
                self.stats.events_routed += 1
                for sub in in_conversation or ():
                    _deliver(sub, event)
                for sub in of_job or ():
                    _deliver(sub, event)
            if watchers and row["event"]["status"] in FINAL_STATUSES:
                for waiter in watchers.get(job_id, ()):
                    waiter.set()
            self.last_seq = row["seq"]
        return moved

    async def _send_progress(self, job_ids: set[UUID]) -> None:
        if not self._subscriptions:
            return
        for row in await events.progress_of(self._pool, job_ids):
            job_id, progress = row["job_id"], row["progress"]
            text: str | None = None
            for sub in (
                *self._by_conversation.get(row["conversation_id"], ()),
                *self._by_job.get(job_id, ()),
            ):
                if sub.live:
                    if text is None:
                        text = dumps(
                            {
                                "type": "progress",
                                "job_id": str(job_id),
                                "step": progress.get("step"),
                                "steps": progress.get("steps"),
                            }
                        )
                    sub.client.offer(text)

    async def _refresh_positions(self) -> None:
        """One read of positions for every followed queued job; messages only where they moved."""
        subs = [s for s in self._subscriptions if s.live and s.tracked and not s.client.closed]
        if not subs:
            return
        self.stats.position_passes += 1
        conversation_ids = {s.conversation_id for s in subs if s.conversation_id is not None}
        job_ids = {j for s in subs if s.conversation_id is None for j in s.tracked}
        rows = await positions.positions_in_subscriptions(
            self._pool, conversation_ids=conversation_ids, job_ids=job_ids
        )
        model = await self._eta.get(self._pool, max_age_s=0.25)
        # Each job's state is computed once; sockets only compare it with what they last got.
        current: dict[UUID, tuple[tuple[int, int | None], float | None]] = {}
        for row in rows:
            eta = model.eta_s(row["queue_position"])
            current[row["job_id"]] = ((row["queue_position"], eta_bucket(eta)), eta)
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

    # -- subscriptions ------------------------------------------------------------------------

    async def subscribe(
        self,
        client: Client,
        *,
        conversation_id: UUID | None = None,
        job_ids: Iterable[UUID] = (),
        since_seq: int | None = None,
    ) -> Subscription:
        """Follow a conversation or jobs (visibility already checked). With since_seq: every
        stored event after it first; then the current positions; then live events. Ends with a
        {"type": "subscribed"} message. A socket has one subscription: this replaces any other."""
        self.unsubscribe(client)
        if since_seq is not None:
            since_seq = min(since_seq, await events.last_seq(self._pool))
        sub = Subscription(
            client=client,
            conversation_id=conversation_id,
            job_ids=frozenset(job_ids),
            delivered=self.last_seq if since_seq is None else since_seq,
            live=since_seq is None,
            needs_replay=since_seq is not None,
        )
        self._register(sub)
        if not sub.live:
            self.stats.replays += 1
            await self._replay(sub)
        batch = await self._positions_snapshot(sub)
        batch.append(dumps({"type": "subscribed", **sub.describe(), "seq": sub.delivered}))
        client.offer(batch)
        return sub

    def unsubscribe(self, client: Client) -> bool:
        sub = client.subscription
        if sub is None:
            return False
        client.subscription = None
        self._subscriptions.discard(sub)
        if sub.conversation_id is not None:
            self._discard(self._by_conversation, sub.conversation_id, sub)
        for job_id in sub.job_ids:
            self._discard(self._by_job, job_id, sub)
        return True

    def _register(self, sub: Subscription) -> None:
        sub.client.subscription = sub
        self._subscriptions.add(sub)
        if sub.conversation_id is not None:
            self._by_conversation.setdefault(sub.conversation_id, set()).add(sub)
        for job_id in sub.job_ids:
            self._by_job.setdefault(job_id, set()).add(sub)

    @staticmethod
    def _discard(index: dict[UUID, set[Subscription]], key: UUID, sub: Subscription) -> None:
        subs = index.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del index[key]

    async def _replay(self, sub: Subscription) -> None:
        """Stored events after sub.delivered, then the live ones that arrived meanwhile; the
        subscription goes live in the same step that finds nothing left (no await between)."""
        conversation_ids = None if sub.conversation_id is None else [sub.conversation_id]
        job_ids = sorted(sub.job_ids) if sub.job_ids else None
        while True:
            while sub.needs_replay:
                sub.needs_replay = False
                while True:
                    rows = await events.events_after(
                        self._pool,
                        sub.delivered,
                        conversation_ids=conversation_ids,
                        job_ids=job_ids,
                        limit=PAGE,
                    )
                    batch = []
                    for row in rows:
                        if row["seq"] > sub.delivered:
                            event = _event_of(row, self._links)
                            _apply(sub, event)
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
                        _apply(sub, event)
                        batch.append(event[4])
                if batch:
                    await sub.client.send(batch)
                continue
            if not sub.needs_replay and not sub.pending:
                sub.live = True
                return

    async def _positions_snapshot(self, sub: Subscription) -> list[str]:
        """A position message for each queued job of the subscription, as of now."""
        sub.recording = {}
        try:
            rows = await positions.positions_in_subscriptions(
                self._pool,
                conversation_ids=() if sub.conversation_id is None else (sub.conversation_id,),
                job_ids=sub.job_ids,
            )
            model = await self._eta.get(self._pool) if rows else None
        finally:
            recording, sub.recording = sub.recording, None
        batch: list[str] = []
        for row in rows:
            job_id = row["job_id"]
            if recording.get(job_id, 0) > row["at_seq"]:
                continue  # a newer event for it was already delivered
            assert model is not None
            queue_position = row["queue_position"]
            eta = model.eta_s(queue_position)
            sub.tracked[job_id] = (queue_position, eta_bucket(eta))
            batch.append(position_message(job_id, queue_position, eta))
        return batch

    # -- waiting for a job ---------------------------------------------------------------------

    def watch(self, job_id: UUID) -> asyncio.Event:
        """An event set when the job's next final transition (complete/error/canceled) is seen."""
        waiter = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(waiter)
        return waiter

    def unwatch(self, job_id: UUID, waiter: asyncio.Event) -> None:
        waiters = self._watchers.get(job_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._watchers[job_id]
