"""Small helpers the tests share: a worker's session, a queue snapshot. (Waiting on a condition:
harness.waiting.eventually.)"""

from __future__ import annotations

import uuid
from typing import Any

from queueing import db, workers
from tests import queries


async def worker_session(
    database_url: str, device: str = "cpu", host: str = "test-host", model: str = "tiny"
) -> tuple[Any, uuid.UUID]:
    """A registered worker's session connection, as a worker process holds one."""
    session = await db.connect(database_url, "gpuqueue-test-worker")
    worker_id = uuid.uuid4()
    await workers.register(
        session, worker_id, host=host, device=device, backend="test", model=model
    )
    return session, worker_id


async def queue_snapshot(pool: db.Pool) -> list[dict[str, Any]]:
    """Every queued job's per-job position and its rank in its model's queue, read in one
    statement (one snapshot), by model and rank."""
    return await queries.fetch_all(pool, "queue_position_audit")


def assert_permutation_in_claim_order(snapshot: list[dict[str, Any]]) -> None:
    """Per model, the positions are 1..n, each job's own count is its rank, and the ranks follow
    the claim order (priority, start tag, arrival); each user's jobs of one priority stay in
    their order of arrival."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in snapshot:
        by_model.setdefault(row["model"], []).append(row)
    for model, rows in by_model.items():
        positions = [row["queue_position"] for row in rows]
        assert positions == list(range(1, len(rows) + 1)), (model, positions)
        assert positions == [row["queue_rank"] for row in rows], model
        keys = [(-row["priority"], row["start_tag"], row["queue_seq"]) for row in rows]
        assert keys == sorted(keys), model
        arrived: dict[tuple[int, int], int] = {}
        for row in rows:
            mine = (row["user_id"], row["priority"])
            assert row["queue_seq"] > arrived.get(mine, -1), (model, mine)
            arrived[mine] = row["queue_seq"]
