"""Revoked and expired tokens close open WebSockets, also when the client sends nothing.

A frame from the client re-checks its token at once (web/ws.py); a quiet socket is caught here:
every `interval_s` one query asks which of the open sockets' token digests are still valid, and
the sockets of the others are refused (an error frame, then close 4401). Revocation is a write to
api_tokens by any process (`gpuqueue token revoke`), so every web server sees it.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg_pool import PoolTimeout

from queueing import db, tokens
from queueing.cancellation import cancel_and_wait

from .live import Broadcaster, Client

log = logging.getLogger(__name__)


class TokenWatch:
    def __init__(self, pool: db.Pool, broadcaster: Broadcaster, interval_s: float) -> None:
        self._pool = pool
        self._broadcaster = broadcaster
        self._interval_s = interval_s
        self._digests: dict[Client, bytes] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.checks = 0  # queries made, for operators and tests

    def add(self, client: Client, token: str) -> None:
        self._digests[client] = tokens.digest(token)

    def discard(self, client: Client) -> None:
        self._digests.pop(client, None)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="gpuqueue-token-watch")]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                log.warning("checking the open WebSockets' tokens failed (%s); next try soon", exc)
            except Exception:
                log.exception("checking the open WebSockets' tokens failed")

    async def check(self) -> int:
        """One query for every open socket; refuses those whose token stopped working."""
        watched = {c: d for c, d in self._digests.items() if not c.closed}
        if not watched:
            return 0
        self.checks += 1
        valid = await tokens.still_valid(self._pool, set(watched.values()))
        refused = 0
        for client, digest in watched.items():
            if digest not in valid and not client.closed:
                self._broadcaster.refuse_unauthorized(client)
                refused += 1
        return refused
