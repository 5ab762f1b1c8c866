"""The start-up check that a process's connections are sessions of their own.

A worker's GPU lock is a session-level advisory lock, its liveness is its session's, and the web
servers and the workers LISTEN: all of that lives on one server session per connection. A
transaction pooler (PgBouncer with pool_mode = transaction or statement) hands each transaction
to whichever server connection is free, so locks would be taken on one backend and released on
another and notifications would never arrive. Rather than misbehave later, `gpuqueue web` and
`gpuqueue worker` look once at start and refuse to run (README: Scaling out).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import psycopg

from . import db

log = logging.getLogger(__name__)

APP_NAME = "gpuqueue-session-check"

# What `gpuqueue web` and `gpuqueue worker` exit with when they refuse the connection: a
# configuration error, like a bad setting (supervisors should not restart it).
EXIT_REFUSED = 2
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class SessionProbe:
    """What one connection's two transactions, around another connection's, saw."""

    first_pid: int  # the backend of the connection's first transaction
    other_pid: int  # another connection's backend, in a transaction open meanwhile
    second_pid: int  # the backend of the connection's second transaction
    locked: bool  # the first transaction took a session-level advisory lock
    lock_survived: bool  # the second transaction's session still held it

    def problem(self) -> str | None:
        """Why these connections are not sessions of their own, or None when they are."""
        seen: list[str] = []
        if self.second_pid != self.first_pid:
            seen.append(
                f"two transactions of one connection ran on backends {self.first_pid} and "
                f"{self.second_pid}"
            )
        if self.other_pid == self.first_pid:
            seen.append(f"two connections were served by the same backend {self.first_pid}")
        if self.locked and not self.lock_survived:
            seen.append("a session-level advisory lock did not survive to the next transaction")
        if not self.locked:
            seen.append("a session-level advisory lock could not be taken")
        if not seen:
            return None
        return (
            "the database URL reaches PostgreSQL through a transaction pooler ("
            + "; ".join(seen)
            + "). gpuqueue keeps GPU locks and LISTEN on its sessions, so each connection must "
            "be a server session of its own: connect to PostgreSQL directly, not through "
            "PgBouncer (README: Scaling out)"
        )


async def probe(url: str) -> SessionProbe:
    """Run the check's three transactions on two fresh connections made from `url`.

    Raises psycopg.OperationalError when nothing answers. Under a pooler the lock stays on the
    backend that took it, keyed by that backend's pid, which nothing else ever asks for.
    """
    url = _with_connect_timeout(url)
    first = await db.connect(url, APP_NAME)
    try:
        other = await db.connect(url, APP_NAME)
        try:
            began = await db.fetch_one(first, "session_check_begin")
            assert began is not None
            async with other.transaction():
                other_pid = await db.fetch_value(other, "session_check_other")
                ended = await db.fetch_one(first, "session_check_end", {"pid": began["pid"]})
                assert ended is not None
        finally:
            await other.close()
    finally:
        await first.close()
    return SessionProbe(
        first_pid=int(began["pid"]),
        other_pid=int(other_pid),
        second_pid=int(ended["pid"]),
        locked=bool(began["locked"]),
        lock_survived=bool(ended["held"]),
    )


def _with_connect_timeout(url: str) -> str:
    """A check must not hang on an address that drops packets: 10 s unless the URL says."""
    if "connect_timeout" in psycopg.conninfo.conninfo_to_dict(url):
        return url
    return psycopg.conninfo.make_conninfo(url, connect_timeout=CONNECT_TIMEOUT_S)


def refuse_transaction_pooling(url: str, command: str) -> None:
    """Exit EXIT_REFUSED, saying why, when `url` goes through a transaction pooler.

    Called before the process starts its event loop. A database that cannot be reached yet is
    not refused: the worker waits for it as it always does (the check is skipped, and logged).
    """
    try:
        found = asyncio.run(probe(url)).problem()
    except psycopg.OperationalError as exc:
        log.warning(
            "%s: the connection pooling check is skipped: it could not connect (%s)",
            command,
            str(exc).strip(),
        )
        return
    if found is not None:
        log.error("%s refuses to start: %s", command, found)
        raise SystemExit(EXIT_REFUSED)
