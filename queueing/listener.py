"""A LISTEN connection that survives its own death.

It re-issues LISTEN after every reconnect and tells its owner (on_connect) so the owner can catch
up on whatever happened while it was away: NOTIFY is only a wake-up, the tables are the truth.
Notifications are handed on synchronously and never await a consumer (PgQueuer's rule).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

from . import db

log = logging.getLogger(__name__)

CHANNEL_EVENT = "gq_event"  # payload: job id, or empty for a batch; transitions were committed
# payload: a model; jobs of it became queued (new, retried or handed back): what wakes its idle
# workers, which a transition of any other kind does not concern
CHANNEL_QUEUED = "gq_queued"
CHANNEL_CANCEL = "gq_cancel"  # payload: job id; a running job's cancel was requested
CHANNEL_PROGRESS = "gq_progress"  # payload: job id; a running job reported a step
# payload: conversation id; it was deleted, with its jobs and their events
CHANNEL_DELETED = "gq_conversation_deleted"


class Listener:
    def __init__(
        self,
        url: str,
        channels: tuple[str, ...],
        on_notify: Callable[[str, str], None],
        *,
        on_connect: Callable[[], None] | None = None,
        app: str = "gpuqueue-listen",
        max_backoff_s: float = 2.0,
    ) -> None:
        self._url = url
        self._channels = channels
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._app = app
        self._max_backoff_s = max_backoff_s
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None
        self.reconnects = 0

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff whenever the connection drops."""
        backoff = 0.05
        while True:
            try:
                conn = await db.connect(self._url, self._app)
            except psycopg.OperationalError as exc:
                log.warning("listener cannot connect (%s); retrying in %.2f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            try:
                for channel in self._channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                self.backend_pid = conn.info.backend_pid
                self.connected.set()
                backoff = 0.05
                if self._on_connect is not None:
                    self._on_connect()
                async for notify in conn.notifies():
                    self._on_notify(notify.channel, notify.payload)
            except psycopg.OperationalError as exc:
                log.warning("listener connection lost (%s); reconnecting", exc)
                self.reconnects += 1
            finally:
                self.connected.clear()
                await conn.close()
