"""The benchmark's own SQL, by name: bench/sql/*.sql, headed like queueing's queries.sql."""

from __future__ import annotations

from pathlib import Path

from queueing.sql import load_queries

SQL_DIR = Path(__file__).with_name("sql")


def _load_all() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted(SQL_DIR.glob("*.sql")):
        for name, text in load_queries(path).items():
            if name in queries:
                raise ValueError(f"bench query {name!r} is defined twice")
            queries[name] = text
    return queries


BENCH_SQL = _load_all()
