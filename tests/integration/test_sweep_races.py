"""The sweep judges liveness from pg_stat_activity, which a transaction reads once and keeps: a
worker that registers while a sweep runs must not be taken for gone (issue 10, items 12, 14)."""

from __future__ import annotations

from queueing import db
from tests.helpers import worker_session


async def test_a_worker_registered_during_a_sweep_is_not_marked_stopped(
    pool: db.Pool, database_url: str
) -> None:
    """The sweep reads pg_stat_activity first (requeueing lost jobs), then marks gone workers
    stopped. A worker registered in between is in the workers table the second statement sees
    but not in the activity the transaction kept; marked stopped, it would look dead and its
    running job would be requeued under it. The marking reads a fresh pg_stat_activity."""
    sweeper = await db.connect(database_url, "gpuqueue-test-sweeper")
    try:
        async with sweeper.transaction():
            await sweeper.execute(b"SELECT count(*) FROM pg_stat_activity")
            session, worker_id = await worker_session(database_url, "cuda:0")
            await sweeper.execute(b"SELECT gq_remove_gone_workers()")
        async with pool.connection() as conn:
            cur = await conn.execute(
                b"SELECT stopped_at FROM workers WHERE id = %(id)s", {"id": worker_id}
            )
            row = await cur.fetchone()
        assert row is not None and row["stopped_at"] is None, row
        await session.close()
    finally:
        await sweeper.close()
