"""A WebSocket client that behaves like a page on a bad network: it follows one conversation,
drops its connection at random moments and comes back with since_seq, and keeps a log of what it
was told, for the checks to judge afterwards."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType

Frame = dict[str, Any]
TRANSITIONS = frozenset({"queued", "processing", "complete", "error", "canceled"})


@dataclass(frozen=True)
class PositionSeen:
    """A position message, when it arrived, and the oldest queue state it can have been read
    from (see FollowingClient.on_frame)."""

    job_id: str
    queue_position: int
    not_before_seq: int
    received_at: float
    connection: int
    refresh: bool  # after "subscribed": from a refresh, and refreshes read in snapshot order


@dataclass
class FollowingClient:
    """Follows `conversation_id` as `token`, over whichever of `base_urls` it picks each time."""

    name: str
    token: str
    conversation_id: str
    base_urls: Sequence[str]
    rng: random.Random
    mean_stay_s: float = 4.0
    events: list[Frame] = field(default_factory=list)
    positions: list[PositionSeen] = field(default_factory=list)
    errors: list[Frame] = field(default_factory=list)
    closes: list[Any] = field(default_factory=list)
    connections: int = 0
    failed_connects: int = 0
    last_seq: int = 0
    latest_of_job: dict[str, int] = field(default_factory=dict)
    since: int = 0  # the since_seq of the current connection
    live: bool = False  # the current connection's "subscribed" has arrived

    # -- what it receives -----------------------------------------------------------------------

    def on_frame(self, frame: Frame) -> str:
        """Record a frame. A position message was read from a committed state at least as new as
        the connection's since_seq and as this job's newest event seen; once "subscribed" has
        arrived, every position message comes from a refresh that read the queue after every
        event this connection had already been sent, so at least as new as all of them."""
        received_at = time.time()
        kind = str(frame.get("type"))
        if kind in TRANSITIONS and "seq" in frame and "job_id" in frame:
            self.events.append(frame)
            self.last_seq = max(self.last_seq, int(frame["seq"]))
            job = str(frame["job_id"])
            self.latest_of_job[job] = max(self.latest_of_job.get(job, 0), int(frame["seq"]))
        elif kind == "position":
            job = str(frame["job_id"])
            floor = self.last_seq if self.live else max(self.since, self.latest_of_job.get(job, 0))
            self.positions.append(PositionSeen(
                job, frame["queue_position"], floor, received_at, self.connections, self.live,
            ))  # fmt: skip
        elif kind == "subscribed":
            self.live = True
        elif kind == "error":
            self.errors.append(frame)
        return kind

    # -- one connection -------------------------------------------------------------------------

    async def _connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        base = self.rng.choice(list(self.base_urls))
        ws = await session.ws_connect(
            f"{base}/ws", params={"token": self.token}, heartbeat=None, autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
        )  # fmt: skip
        self.connections += 1
        self.since, self.live = self.last_seq, False
        await ws.send_json(
            {"op": "subscribe", "conversation_id": self.conversation_id, "since_seq": self.last_seq}
        )
        return ws

    async def _read(
        self, ws: aiohttp.ClientWebSocketResponse, until: float, stop: asyncio.Event | None
    ) -> str:
        """Read frames until the deadline, a stop, an error frame or a close; says which."""
        while True:
            if stop is not None and stop.is_set():
                return "stop"
            remaining = until - time.monotonic()
            if remaining <= 0:
                return "deadline"
            try:
                msg = await ws.receive(timeout=min(remaining, 0.5))
            except TimeoutError:
                continue
            if msg.type is not WSMsgType.TEXT:
                self.closes.append((msg.type.name, ws.close_code))
                return "closed"
            if self.on_frame(json.loads(msg.data)) == "error":
                return "error"

    async def wander(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """Connect, follow for a random while, drop the connection, repeat until `stop`."""
        while not stop.is_set():
            try:
                ws = await self._connect(session)
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.failed_connects += 1
                await asyncio.sleep(self.rng.uniform(0.1, 0.4))
                continue
            try:
                stay = self.rng.expovariate(1 / self.mean_stay_s)
                outcome = await self._read(ws, time.monotonic() + stay, stop)
            except (aiohttp.ClientError, OSError):
                outcome = "closed"
            finally:
                await ws.close()
            if outcome in ("error", "closed"):
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))

    async def catch_up(self, session: aiohttp.ClientSession, *, within: float = 30.0) -> None:
        """Reconnect once more with since_seq and read until caught up: the replay ends with
        "subscribed", and a ping's pong proves nothing else was on its way."""
        deadline = time.monotonic() + within
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} could not catch up within {within} s")
            try:
                ws = await self._connect(session)
            except (aiohttp.ClientError, OSError, TimeoutError):
                await asyncio.sleep(0.1)
                continue
            try:
                if await self._until(ws, "subscribed", deadline):
                    await ws.send_json({"op": "ping"})
                    if await self._until(ws, "pong", deadline):
                        return
            except (aiohttp.ClientError, OSError):
                pass
            finally:
                await ws.close()
            await asyncio.sleep(0.1)

    async def _until(self, ws: aiohttp.ClientWebSocketResponse, kind: str, deadline: float) -> bool:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                msg = await ws.receive(timeout=remaining)
            except TimeoutError:
                return False
            if msg.type is not WSMsgType.TEXT:
                return False
            got = self.on_frame(json.loads(msg.data))
            if got == kind:
                return True
            if got == "error":
                return False
