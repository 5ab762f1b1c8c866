"""Scale: with 100,000 finished jobs present, positions read only the queued rows (R9.5)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from queueing import db, jobs
from queueing.actors import Actor
from queueing.eta import EtaModel
from queueing.sql import QUERIES
from tests.integration.worker_support import seed

pytestmark = pytest.mark.slow


async def explain(pool: db.Db, query: str, params: dict[str, Any]) -> dict[str, Any]:
    async with db.connection(pool) as conn:
        cur = await conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, params, prepare=False
        )
        row = await cur.fetchone()
    assert row is not None
    plan = row["QUERY PLAN"]
    return dict((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])


async def scan_counts(conn: db.Connection) -> tuple[int, int]:
    """The scans of jobs and of jobs_queued_idx, with this connection's own counts flushed: run
    the query under test on the same connection (another session's counts reach the shared
    statistics only when that session flushes them, up to seconds later)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    cur = await conn.execute(
        "SELECT (SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'jobs') AS seq,"
        " (SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'jobs_queued_idx')"
        " AS idx"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["seq"]), int(row["idx"])


async def test_position_queries_touch_only_queued_rows_among_100000_finished(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """R9.5: 100,000 finished jobs stay out of the position queries (partial indexes only)."""
    await seed(pool, alice, conversation_id, 100_000, "complete")
    await seed(pool, alice, conversation_id, 50, "queued")
    async with pool.connection() as conn:
        await conn.execute("VACUUM ANALYZE jobs")
    listed = (await jobs.list_jobs(pool, conversation_id, actor=alice))["jobs"]
    last_queued = [j for j in listed if j["status"] == "queued"][-1]

    # One job's GET: its position (and the work ahead, for its ETA) counted in two index-only
    # range passes, whatever the number of finished jobs.
    async with pool.connection() as conn:
        seq_before, idx_before = await scan_counts(conn)
        got = await jobs.get_job(conn, last_queued["job_id"], actor=alice, eta=EtaModel())
        assert got["queue_position"] == 50
        seq_after, idx_after = await scan_counts(conn)
    assert seq_after == seq_before, "the one-job position query scanned the jobs table"
    assert idx_after - idx_before == 2, "both position counts use jobs_queued_idx"

    get = QUERIES["job_get"], {"job_id": last_queued["job_id"], "owner": None, "count": True}
    async with pool.connection() as conn:
        await explain(conn, *get)  # a session's first call of the functions reads the catalog
        one = await explain(conn, *get)
    assert one["Shared Hit Blocks"] + one["Shared Read Blocks"] < 50
