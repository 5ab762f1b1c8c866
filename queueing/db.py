"""Connections and named-query execution: the one place that talks to psycopg."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from .config import Settings
from .errors import translated
from .sql import QUERIES

Connection: TypeAlias = psycopg.AsyncConnection[DictRow]
Pool: TypeAlias = AsyncConnectionPool[Connection]
Db: TypeAlias = Connection | Pool
Row: TypeAlias = dict[str, Any]


# A peer that vanishes without a word (power loss, a cut network) is given up on both ends well
# within 30 s: the server's defaults here (keepalive idle 7200 s, tcp_user_timeout 0) would keep
# a dead worker's session, its job and its GPU lock for about 2 h 11 min. Keepalives probe an
# idle connection (5 s idle, then every 2 s, 3 misses: ~11 s); tcp_user_timeout ends one whose
# sent data stays unacknowledged for 10 s (keepalives never probe those). The server also checks
# its client's socket every 2 s while a statement runs (a worker waiting for a GPU lock).
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 10_000
CLIENT_CHECK_INTERVAL_MS = 2_000


def _session_options() -> str:
    """UTC timestamps, short lock waits, and the server's side of dead-peer detection."""
    return (
        f"-c timezone=UTC -c lock_timeout={Settings.lock_timeout}"
        f" -c tcp_keepalives_idle={KEEPALIVE_IDLE_S}"
        f" -c tcp_keepalives_interval={KEEPALIVE_INTERVAL_S}"
        f" -c tcp_keepalives_count={KEEPALIVE_COUNT}"
        f" -c tcp_user_timeout={TCP_USER_TIMEOUT_MS}"
        f" -c client_connection_check_interval={CLIENT_CHECK_INTERVAL_MS}"
    )


def with_lock_timeout(url: str, lock_timeout: str) -> str:
    """The URL with the deployment's lock_timeout (Settings.lock_timeout) among its options.

    The URL is what every connection of a process is made from, so the CLI puts the setting
    there once and each session gets it; the options a URL carries win over our defaults.
    """
    info = psycopg.conninfo.conninfo_to_dict(url)
    given = str(info.get("options") or "")
    option = f"-c lock_timeout={lock_timeout}"
    if given.endswith(option):  # already there (a child process given its parent's URL)
        return url
    info["options"] = f"{given} {option}".strip()
    return psycopg.conninfo.make_conninfo("", **info)


def conninfo(url: str, app: str, extra_options: str = "") -> str:
    """The URL with our session settings and an application_name that pg_stat_activity shows."""
    given = str(psycopg.conninfo.conninfo_to_dict(url).get("options") or "")
    return psycopg.conninfo.make_conninfo(
        url,
        application_name=app,
        options=" ".join(o for o in (_session_options(), given, extra_options) if o),
        # The client's side of the same: a server that vanished is noticed in seconds, not hours.
        keepalives=1,
        keepalives_idle=KEEPALIVE_IDLE_S,
        keepalives_interval=KEEPALIVE_INTERVAL_S,
        keepalives_count=KEEPALIVE_COUNT,
        tcp_user_timeout=TCP_USER_TIMEOUT_MS,
    )


async def connect(url: str, app: str, extra_options: str = "") -> Connection:
    """A dedicated autocommit connection: each statement is its own transaction."""
    return await psycopg.AsyncConnection.connect(
        conninfo(url, app, extra_options), autocommit=True, row_factory=dict_row
    )


ConnectionHook: TypeAlias = Callable[[Connection], Awaitable[None]]


def make_pool(
    url: str,
    app: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    configure: ConnectionHook | None = None,
    check: ConnectionHook | None = None,
) -> Pool:
    """An autocommit pool, not yet opened (``await pool.open()`` or ``async with``);
    `configure` runs on each new connection, `check` on each one lent."""
    return AsyncConnectionPool(
        conninfo(url, app),
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, "row_factory": dict_row},
        configure=configure,
        check=check,
        open=False,
        name=app,
    )


@asynccontextmanager
async def connection(db: Db) -> AsyncIterator[Connection]:
    """A connection from a pool, or the connection itself."""
    if isinstance(db, AsyncConnectionPool):
        async with db.connection() as conn:
            yield conn
    else:
        yield db


async def fetch_all(
    db: Db, name: str, params: Mapping[str, Any] | None = None, *, prepare: bool | None = None
) -> list[Row]:
    """Run the named query and return every row (none for a statement that returns none).

    Whether there are rows to fetch is `rownumber`, not `description`: the description builds
    a Column object for every column of every result (a sixth of the client's CPU in a
    hand-off)."""
    async with connection(db) as conn:
        with translated():
            cur = await conn.execute(QUERIES[name], params, prepare=prepare)
            return await cur.fetchall() if cur.rownumber is not None else []


async def fetch_one(
    db: Db, name: str, params: Mapping[str, Any] | None = None, *, prepare: bool | None = None
) -> Row | None:
    """Run the named query and return its first row, if any."""
    rows = await fetch_all(db, name, params, prepare=prepare)
    return rows[0] if rows else None


async def fetch_value(db: Db, name: str, params: Mapping[str, Any] | None = None) -> Any:
    """Run the named query and return the first column of its first row (None when no row)."""
    row = await fetch_one(db, name, params)
    return None if row is None else next(iter(row.values()))
