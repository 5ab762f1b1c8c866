"""Connections and named-query execution: the one place that talks to psycopg."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from .errors import translated
from .sql import QUERIES

Connection: TypeAlias = psycopg.AsyncConnection[DictRow]
Pool: TypeAlias = AsyncConnectionPool[Connection]
Db: TypeAlias = Connection | Pool
Row: TypeAlias = dict[str, Any]


def _session_options() -> str:
    """Timestamps leave the database as ISO 8601 in UTC; no statement waits long on a lock."""
    return f"-c timezone=UTC -c lock_timeout={os.environ.get('GPUQUEUE_LOCK_TIMEOUT', '10s')}"


def conninfo(url: str, app: str, extra_options: str = "") -> str:
    """The URL with our session settings and an application_name that pg_stat_activity shows."""
    return psycopg.conninfo.make_conninfo(
        url,
        application_name=app,
        options=f"{_session_options()} {extra_options}".strip(),
        # A peer that vanished without a word (machine gone) is noticed in seconds, not hours.
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
    )


async def connect(url: str, app: str, extra_options: str = "") -> Connection:
    """A dedicated autocommit connection: each statement is its own transaction."""
    return await psycopg.AsyncConnection.connect(
        conninfo(url, app, extra_options), autocommit=True, row_factory=dict_row
    )


def make_pool(url: str, app: str, *, min_size: int = 1, max_size: int = 10) -> Pool:
    """An autocommit pool, not yet opened (``await pool.open()`` or ``async with``)."""
    return AsyncConnectionPool(
        conninfo(url, app),
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, "row_factory": dict_row},
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
    """Run the named query and return every row."""
    async with connection(db) as conn:
        with translated():
            cur = await conn.execute(QUERIES[name], params, prepare=prepare)
            return await cur.fetchall() if cur.description else []


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
