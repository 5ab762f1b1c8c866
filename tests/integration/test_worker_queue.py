"""The worker against the queue: order, the GPU lock, failures, timeouts, retries, cancel.

In-process stub workers on the real database; the process-level behaviour (signals, kill -9,
several processes on one device) is in test_worker_processes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gpu_worker.worker import Worker
from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from tests.integration.worker_support import (
    InProcessWorker,
    gpu_locks,
    job,
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    start_worker_fixture,  # noqa: F401  (the start_worker fixture)
    status_of,
    submit,
    submit_many,
    wait_all_final,
    wait_status,
)

StartWorker = Callable[..., InProcessWorker]


async def test_jobs_are_processed_in_queue_order(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker
) -> None:
    """R1.2, R1.3: queued jobs wait and are taken in order (priority first, then first come),
    and after each completion the next one goes on."""
    ids = await submit_many(pool, conversation_id, alice, 5)
    urgent = await submit(pool, conversation_id, alice, "urgent", priority=5)
    start_worker()
    await wait_all_final(pool, [*ids, urgent])
    started = await rows(
        pool,
        "SELECT id::text, status FROM jobs ORDER BY started_at",
    )
    assert [r["id"] for r in started] == [urgent, *ids]
    assert {r["status"] for r in started} == {"complete"}


async def test_gpu_lock_is_held_while_processing_and_released_after_complete(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker
) -> None:
    """R2.1, R2.2: the GPU lock is taken when the job starts processing (pg_locks and the
    gpu_locks view name it) and released when it completes."""
    handle = start_worker(device="cuda:0", delay=0.6)
    job_id = await submit(pool, conversation_id, alice)
    await wait_status(pool, job_id, "processing")
    held = await rows(pool, "SELECT device, job_id::text, worker_id::text FROM gpu_locks")
    assert held == [{"device": "cuda:0", "job_id": job_id, "worker_id": handle.worker.worker_id}]
    assert len(await gpu_locks(pool)) == 1
    await wait_status(pool, job_id, "complete")
    assert await gpu_locks(pool) == []


async def test_after_a_failure_the_lock_is_released_and_the_next_job_starts(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker
) -> None:
    """R1.4, R2.3, R6.3: a failing job ends error with its message, releases the GPU lock, and
    the next job starts automatically."""
    failing = await submit(pool, conversation_id, alice, "[fail] broken", max_attempts=1)
    after = await submit(pool, conversation_id, alice, "fine")
    start_worker()
    await wait_all_final(pool, [failing, after])
    failed = await job(pool, failing)
    assert failed["status"] == "error"
    assert "failed on purpose" in failed["error"]
    assert await status_of(pool, after) == "complete"
    assert await gpu_locks(pool) == []


async def test_a_job_past_its_deadline_ends_error_and_the_next_starts_within_a_second(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker
) -> None:
    """R6.1, R6.2, R6.3: a job that runs past timeout_s ends error with a message that says it
    timed out and after how long; it is not retried; the lock is released and the next job
    starts within 1 s."""
    hanging = await submit(pool, conversation_id, alice, "[hang]", timeout_s=1, max_attempts=3)
    after = await submit(pool, conversation_id, alice, "fine")
    start_worker()
    await wait_all_final(pool, [hanging, after])
    timed_out = await job(pool, hanging)
    assert timed_out["status"] == "error"
    assert timed_out["attempts"] == 1
    assert timed_out["error"].startswith("timed out after 1.")
    assert "timeout_s=1" in timed_out["error"]
    gap = await rows(
        pool,
        "SELECT extract(epoch FROM b.started_at - a.finished_at)::float8 AS gap"
        " FROM jobs a, jobs b WHERE a.id = %(a)s AND b.id = %(b)s",
        {"a": hanging, "b": after},
    )
    assert 0 <= gap[0]["gap"] < 1.0
    assert await gpu_locks(pool) == []


async def test_failures_retry_with_growing_backoff_until_max_attempts(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker
) -> None:
    """R6.5, R6.3, R6.4, R5.6: a pipeline exception is retried with exponential backoff and
    jitter until max_attempts; then the job ends error, the user sees the last error (also on
    a fresh read), and every attempt is in the transitions."""
    from queueing.jobs import Backoff

    job_id = await submit(pool, conversation_id, alice, "[fail] always", max_attempts=3)
    start_worker(backoff=Backoff(0.2, 5.0), poll_interval_s=0.05)
    await wait_status(pool, job_id, "error", within=15)
    seen = await job(pool, job_id)
    assert seen["attempts"] == 3
    assert "failed on purpose" in seen["error"]
    assert [t["status"] for t in seen["transitions"]] == [
        "pending",
        "queued",
        "processing",
        "queued",
        "processing",
        "queued",
        "processing",
        "error",
    ]
    events = await rows(
        pool,
        "SELECT status, at, detail FROM job_events WHERE job_id = %(id)s ORDER BY seq",
        {"id": job_id},
    )
    retries = [e for e in events if e["status"] == "queued" and "retry_in_s" in e["detail"]]
    delays = [float(e["detail"]["retry_in_s"]) for e in retries]
    assert len(delays) == 2
    assert 0.1 <= delays[0] <= 0.2 and 0.2 <= delays[1] <= 0.4  # equal jitter of 0.2 * 2^k
    assert delays[0] <= delays[1]
    for queued, next_start in zip(
        retries, [e for e in events if e["status"] == "processing"][1:], strict=True
    ):
        waited = (next_start["at"] - queued["at"]).total_seconds()
        assert waited >= float(queued["detail"]["retry_in_s"]) - 0.01
    assert (await job(pool, job_id))["error"] == seen["error"]  # R6.4: a reload shows it too


async def test_cancel_of_a_running_job_ends_it_canceled_within_a_second(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker
) -> None:
    """Cancel of a running job: it ends canceled within 1 s (NOTIFY plus the step callback),
    the GPU lock is released and the next job starts."""
    running = await submit(pool, conversation_id, alice, "[hang]", timeout_s=60)
    after = await submit(pool, conversation_id, alice, "fine")
    start_worker()
    await wait_status(pool, running, "processing")
    await jobs.cancel(pool, running, actor=alice)
    row = await wait_status(pool, running, "canceled", within=1.0)
    assert row["finished_at"] is not None
    await wait_status(pool, after, "complete")
    assert await gpu_locks(pool) == []


async def test_progress_is_stored_at_most_ten_times_a_second(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker, database_url: str
) -> None:
    """Progress: step i of n is kept on the job row while it runs, coalesced to 10 a second."""
    from queueing.listener import CHANNEL_PROGRESS, Listener

    received: list[str] = []
    listener = Listener(database_url, (CHANNEL_PROGRESS,), lambda _c, p: received.append(p))
    listening = asyncio.create_task(listener.run())
    await listener.connected.wait()
    job_id = await submit(pool, conversation_id, alice, "slow", steps=100)
    start_worker(delay=1.0)
    await wait_status(pool, job_id, "complete")
    listening.cancel()
    progress_reports = [p for p in received if p == job_id]
    assert 5 <= len(progress_reports) <= 11
    stored = await rows(pool, "SELECT progress FROM jobs WHERE id = %(id)s", {"id": job_id})
    assert stored[0]["progress"]["steps"] == 100


async def test_a_lost_notify_is_covered_by_polling(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker
) -> None:
    """Issue 3 (1): a job that becomes runnable with no NOTIFY at all is still picked up."""
    handle = start_worker(poll_interval_s=0.3)
    await eventually(lambda: _registered(pool, handle))
    async with pool.connection() as conn, conn.transaction():
        # Its one NOTIFY is delivered at commit, when it is not yet runnable; nothing else will
        # notify when run_after passes (as for a retry whose backoff runs out).
        job_id = await submit(conn, conversation_id, alice, "later")
        await conn.execute(
            "UPDATE jobs SET run_after = now() + interval '0.5 second' WHERE id = %(id)s",
            {"id": job_id},
        )
    row = await wait_status(pool, job_id, "complete", within=3)
    assert (row["started_at"] - row["run_after"]).total_seconds() >= 0


async def _registered(pool: db.Pool, handle: InProcessWorker) -> bool:
    if handle.worker.worker_id is None:
        return False
    found = await rows(
        pool, "SELECT 1 FROM live_workers WHERE id = %(id)s", {"id": handle.worker.worker_id}
    )
    return bool(found)


class BrokenBackend:
    """A backend whose weights cannot be loaded."""

    name = "broken"

    def load(self) -> None:
        raise OSError("model files not found")

    def generate(self, request: object, on_step: object) -> bytes:
        raise AssertionError("never called: nothing is claimed before the pipeline is ready")


async def test_a_backend_that_fails_to_load_never_claims_and_exits_1(
    pool: db.Pool, conversation_id: str, alice: Actor, database_url: str
) -> None:
    """Issue 3.7: the pipeline is loaded before the first claim, so a worker that cannot load
    it never registers, never holds a job, and exits 1."""
    from gpu_worker.worker import Worker
    from tests.integration.worker_support import fast_config

    job_id = await submit(pool, conversation_id, alice)
    worker = Worker(
        database_url,
        device="cuda:0",
        backend=BrokenBackend(),
        backend_name="broken",
        config=fast_config(),
    )
    assert await worker.run() == 1
    assert await status_of(pool, job_id) == "queued"
    assert await rows(pool, "SELECT id FROM workers") == []


async def test_a_side_task_that_dies_stops_the_worker(
    pool: db.Pool,
    conversation_id: str,
    alice: Actor,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Procrastinate's rule (issue 3): when a side task (here the listener) dies of an
    unexpected error, the worker hands its running job back and stops with exit 1 instead of
    limping on. (The sweep is not such a task: a sweep that raises is retried, see
    test_job_failures.py.)"""
    listener_may_fail = asyncio.Event()
    real_on_notify = Worker._on_notify

    def failing_on_notify(self: Worker, channel: str, payload: str) -> None:
        if listener_may_fail.is_set():
            raise RuntimeError("a bug in the listener")
        real_on_notify(self, channel, payload)

    monkeypatch.setattr(Worker, "_on_notify", failing_on_notify)
    job_id = await submit(pool, conversation_id, alice, "[hang]", timeout_s=60)
    handle = start_worker()
    await wait_status(pool, job_id, "processing")
    listener_may_fail.set()
    await submit(pool, conversation_id, alice, "its NOTIFY reaches the failing handler")
    assert await asyncio.wait_for(handle.task, 5) == 1
    seen = await job(pool, job_id)
    assert (seen["status"], seen["attempts"]) == ("queued", 0)
    assert await gpu_locks(pool) == []
