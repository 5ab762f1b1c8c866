"""Small helpers the tests share: waiting on a condition with a deadline, never sleeping blind."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from queueing import db, workers
from tests import queries

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, within: float = 10.0, interval: float = 0.02
) -> T:
    """Poll `probe` until it returns something truthy, or fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s (last value: {value!r})")
        await asyncio.sleep(interval)


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
