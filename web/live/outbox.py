"""One WebSocket's bounded outbox, drained by its own sender task (aiohttp's rule).

The fan-out loop serves every socket, so it never awaits one: it offers without waiting, and a
client whose outbox overflows cannot keep up, so it is closed (4008) and catches up with
`since_seq` when it reconnects. Only the sender task writes to the socket, and only the handler
task reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from aiohttp import web

from .stats import FanoutStats
from .wire import CLOSE_TOO_SLOW

if TYPE_CHECKING:
    from .subscriptions import Subscription

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


Outgoing: TypeAlias = str | list[str] | _Close


class ClientGone(Exception):
    """The socket was closed while something was being queued for it."""


class Client:
    """One WebSocket: its outbox, its sender task, and its subscription (one at most)."""

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
            self.stats.deliveries.offered(item)
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
        self._drop_queued()  # wakes a handler waiting in send()
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
        self._drop_queued()
        if self._closer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._closer

    def _drop_queued(self) -> None:
        while not self.outbox.empty():
            self.stats.deliveries.done(self.outbox.get_nowait())

    async def _send_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                item = await self.outbox.get()
                try:
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
                finally:
                    self.stats.deliveries.done(item)
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
