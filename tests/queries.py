"""Statements only tests run (tests/sql/queries.sql), split by queueing's own loader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from queueing import db
from queueing.sql import load_queries

TEST_QUERIES = load_queries(Path(__file__).with_name("sql") / "queries.sql")


async def fetch_all(
    conn: db.Db, name: str, params: Mapping[str, Any] | None = None
) -> list[db.Row]:
    """Run the named test query and return every row."""
    async with db.connection(conn) as c:
        cur = await c.execute(TEST_QUERIES[name], params)
        return await cur.fetchall()


async def fetch_value(conn: db.Db, name: str, params: Mapping[str, Any] | None = None) -> Any:
    """The first column of the named test query's first row."""
    rows = await fetch_all(conn, name, params)
    return next(iter(rows[0].values()))
