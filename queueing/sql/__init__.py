"""Named queries: every runtime statement lives in queries.sql, headed by ``-- name: <name>``."""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(path: Path) -> dict[str, str]:
    """Split a .sql file into {name: statement}; the text up to the next header is the query."""
    text = path.read_text()
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {path}")
        queries[name] = body.strip()
    return queries


QUERIES = load_queries(Path(__file__).with_name("queries.sql"))
