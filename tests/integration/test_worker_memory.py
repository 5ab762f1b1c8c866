"""R9.4: processing jobs leaks no memory (the worker's RSS stays flat after warm-up)."""

from __future__ import annotations

from collections.abc import Callable

from harness.commands import WorkerChild
from queueing import db
from queueing.actors import Actor
from tests.integration.worker_support import (
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    submit,
    wait_all_final,
)

SpawnWorker = Callable[..., WorkerChild]


async def run_batch(
    pool: db.Pool, conversation_id: str, alice: Actor, n: int, *, within: float, **params: object
) -> None:
    ids = [
        await submit(pool, conversation_id, alice, f"memory {i}", seed=i, **params)  # type: ignore[arg-type]
        for i in range(n)
    ]
    await wait_all_final(pool, ids, within=within)


async def assert_rss_flat(
    worker: WorkerChild,
    pool: db.Pool,
    conversation_id: str,
    alice: Actor,
    *,
    warmup: int,
    jobs: int,
    within: float,
    **params: object,
) -> None:
    await worker.registered(pool, within=120)
    await run_batch(pool, conversation_id, alice, warmup, within=within, **params)
    warm = worker.rss_kib()
    await run_batch(pool, conversation_id, alice, jobs, within=within, **params)
    after = worker.rss_kib()
    print(f"RSS after warm-up {warm} KiB, after {jobs} more jobs {after} KiB")
    assert after <= warm * 1.05, f"RSS grew from {warm} to {after} KiB over {jobs} jobs"


async def test_rss_stays_flat_over_300_stub_jobs(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """R9.4: after warm-up, the worker's RSS grows by less than 5% over 300 stub jobs."""
    worker = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="0")
    await assert_rss_flat(worker, pool, conversation_id, alice, warmup=50, jobs=300, within=60)
