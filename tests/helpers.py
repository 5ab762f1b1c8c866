"""Small helpers the tests share: a worker's session, a queue snapshot. (Waiting on a condition:
harness.waiting.eventually.)"""

from __future__ import annotations

import uuid
from typing import Any

from queueing import db, workers
from tests import queries


async def worker_session(
    database_url: str, device: str = "cpu", host: str = "test-host"
) -> tuple[Any, uuid.UUID]:
    """A registered worker's session connection, as a worker process holds one."""
    session = await db.connect(database_url, "gpuqueue-test-worker")
    worker_id = uuid.uuid4()
    await workers.register(session, worker_id, host=host, device=device, backend="test", model=None)
    return session, worker_id


async def queue_snapshot(pool: db.Pool) -> list[dict[str, Any]]:
    """Every queued job's per-job position and its rank, read in one statement (one snapshot)."""
    return await queries.fetch_all(pool, "queue_position_audit")
