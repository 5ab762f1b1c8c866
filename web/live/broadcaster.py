"""The one object the web handlers hold: it wires the fan-out's parts and answers for them.

Handlers connect sockets, subscribe them, refuse them, and wait for jobs to end through this
facade; the parts behind it (outbox, subscriptions, fan-out, replay, waiters) know only what
they need of one another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from uuid import UUID

from aiohttp import web

from queueing import db
from queueing.listener import Listener
from queueing.positions import EtaCache

from ..image_links import ImageLinks
from .fanout import Fanout
from .outbox import Client
from .placing import Placing
from .replay import Replayer
from .stats import FanoutStats
from .subscriptions import Subscription, Subscriptions
from .waiters import CancelWaiters
from .wire import CLOSE_UNAUTHORIZED, error_message


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
        self.outbox_size = outbox_size
        self.stats = FanoutStats()
        self._subs = Subscriptions()
        self._waiters = CancelWaiters()
        self._fanout = Fanout(
            pool,
            url,
            self._subs,
            self._waiters,
            self.stats,
            eta_cache=eta_cache,
            image_links=image_links,
            poll_interval_s=poll_interval_s,
        )
        self._replayer = Replayer(
            pool, self._subs, self._fanout, self.stats, eta_cache=eta_cache, image_links=image_links
        )

    @property
    def listener(self) -> Listener:
        return self._fanout.listener

    @property
    def placing(self) -> Placing:
        """The queue order: queued jobs' places, exact as of the newest event routed."""
        return self._fanout.placing

    @property
    def routed_seq(self) -> int:
        """The newest event seq the fan-out has routed: every event up to it has reached every
        subscription that follows it (operators, tests)."""
        return self._fanout.last_seq

    async def start(self) -> None:
        await self._fanout.start()

    async def stop(self) -> None:
        await self._fanout.stop()

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

    async def subscribe(
        self,
        client: Client,
        *,
        conversation_id: UUID | None = None,
        job_ids: Iterable[UUID] = (),
        since_seq: int | None = None,
    ) -> Subscription:
        """Follow a conversation or jobs (visibility already checked). A socket has one
        subscription: this replaces any other."""
        return await self._replayer.subscribe(
            client, conversation_id=conversation_id, job_ids=job_ids, since_seq=since_seq
        )

    def unsubscribe(self, client: Client) -> bool:
        return self._subs.remove(client)

    def watch(self, job_id: UUID) -> asyncio.Event:
        return self._waiters.watch(job_id)

    def unwatch(self, job_id: UUID, waiter: asyncio.Event) -> None:
        self._waiters.unwatch(job_id, waiter)
