"""Named queries: every query has a unique name, a body, and a caller outside the tests."""

import re
from pathlib import Path

import pytest

from queueing.sql import QUERIES, load_queries


def test_every_named_query_has_a_body() -> None:
    assert QUERIES
    assert all(body.strip() for body in QUERIES.values())


def test_a_query_defined_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sql"
    path.write_text("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")
    with pytest.raises(ValueError, match="defined twice"):
        load_queries(path)


def test_the_body_runs_to_the_next_header(tmp_path: Path) -> None:
    path = tmp_path / "q.sql"
    path.write_text("-- name: a\n-- a comment\nSELECT 1\n\n-- name: b\nSELECT 2\n")
    assert load_queries(path) == {"a": "-- a comment\nSELECT 1", "b": "SELECT 2"}


ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("queueing", "web", "gpu_worker", "gpuqueue", "bench")


def test_every_named_query_has_a_caller_outside_the_tests() -> None:
    """A query only tests run belongs in tests/sql/queries.sql; one nobody runs is dead."""
    source = "\n".join(
        path.read_text() for package in RUNTIME_PACKAGES for path in (ROOT / package).rglob("*.py")
    )
    called = set(re.findall(r"[\"'](\w+)[\"']", source))
    assert sorted(set(QUERIES) - called) == []
