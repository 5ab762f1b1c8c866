"""`gpuqueue worker` processes: the GPU lock across processes, crashes, signals, exit codes."""

from __future__ import annotations

import itertools
import signal
import socket
import time
from collections.abc import Callable

from harness.commands import WorkerChild
from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from queueing.jobs import Claim
from tests.integration.worker_support import (
    gpu_locks,
    job,
    live_workers,
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    status_of,
    submit,
    submit_many,
    wait_all_final,
    wait_status,
)

SpawnWorker = Callable[..., WorkerChild]


async def _intervals(pool: db.Pool, device: str | None = None) -> list[db.Row]:
    return await rows(
        pool,
        "SELECT j.id, j.device, w.pid, j.started_at, j.finished_at FROM jobs AS j"
        " JOIN workers AS w ON w.id = j.worker_id"
        " WHERE j.status = 'complete' AND (%(device)s::text IS NULL OR j.device = %(device)s)"
        " ORDER BY j.started_at",
        {"device": device},
    )


async def test_two_workers_on_one_device_never_run_jobs_at_once(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """R2.4, R2.1: a second worker on the same device waits for the GPU lock; the jobs' intervals
    [started_at, finished_at] never overlap, and both workers take turns."""
    first = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="0.15")
    second = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="0.15")
    await first.registered(pool)
    await second.registered(pool)
    ids = await submit_many(pool, conversation_id, alice, 8)
    await wait_all_final(pool, ids)
    done = await _intervals(pool, "cuda:0")
    assert len(done) == 8
    for earlier, later in itertools.pairwise(done):
        assert earlier["finished_at"] <= later["started_at"], (earlier, later)
    assert {r["pid"] for r in done} == {first.pid, second.pid}


async def test_workers_on_different_devices_run_in_parallel(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """R2.4 (its other half): the GPU lock is per device, so two devices overlap."""
    a = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="0.6")
    b = spawn_worker("cuda:1", GPUQUEUE_STUB_DELAY="0.6")
    await a.registered(pool)
    await b.registered(pool)
    ids = await submit_many(pool, conversation_id, alice, 4)
    await wait_all_final(pool, ids)
    on_a = await _intervals(pool, "cuda:0")
    on_b = await _intervals(pool, "cuda:1")
    assert on_a and on_b
    assert any(
        x["started_at"] < y["finished_at"] and y["started_at"] < x["finished_at"]
        for x in on_a
        for y in on_b
    )


async def test_lock_held_too_long_logs_a_warning_naming_job_and_device(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """R2.5: with the lock held past GPUQUEUE_LOCK_WARN_S a WARNING names the job and the device,
    and it is repeated at each further interval."""
    worker = spawn_worker("cuda:3", GPUQUEUE_STUB_DELAY="1.1", GPUQUEUE_LOCK_WARN_S="0.4")
    await worker.registered(pool)
    job_id = await submit(pool, conversation_id, alice)
    await wait_status(pool, job_id, "complete")
    warnings = [
        line
        for line in worker.log().splitlines()
        if "WARNING" in line
        and f"GPU lock on {socket.gethostname()}/cuda:3 held for" in line
        and job_id in line
    ]
    assert len(warnings) == 2, worker.log()


async def test_kill_9_mid_job_requeues_it_for_another_worker(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Crash recovery (issue 3.3, R6.2): a worker killed with SIGKILL in the middle of a job
    frees its GPU at once; the job is requeued within 5 s (the attempt counted) and finished by
    another worker; nothing stays processing."""
    doomed = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="30")
    await doomed.registered(pool)
    job_id = await submit(pool, conversation_id, alice, max_attempts=3)
    await wait_status(pool, job_id, "processing")
    survivor = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="0.05")
    await survivor.registered(pool)
    doomed.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await wait_status(pool, job_id, ("queued", "complete"), within=5)
    assert time.monotonic() - killed_at < 5
    row = await wait_status(pool, job_id, "complete")
    finished_by = await rows(
        pool, "SELECT pid FROM workers WHERE id = %(id)s", {"id": row["worker_id"]}
    )
    assert finished_by[0]["pid"] == survivor.pid
    seen = await job(pool, job_id)
    assert seen["attempts"] == 2
    assert [t["status"] for t in seen["transitions"]] == [
        "pending",
        "queued",
        "processing",
        "queued",
        "processing",
        "complete",
    ]
    assert await rows(pool, "SELECT id FROM jobs WHERE status = 'processing'") == []


async def test_a_cut_session_requeues_the_job_fences_the_old_claim_and_the_worker_returns(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Crash recovery (issue 3.3): pg_terminate_backend on the worker's session. The worker
    stops the job and discards its result, the job is requeued, the old claim's late complete
    is a no-op, and the process comes back as a new worker that finishes the job."""
    worker = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="1.5")
    first = await worker.registered(pool)
    job_id = await submit(pool, conversation_id, alice, max_attempts=3)
    processing = await wait_status(pool, job_id, "processing")
    old_claim = Claim.from_row({**processing, "gpu_lock": "unused"})
    await rows(pool, "SELECT pg_terminate_backend(%(pid)s)", {"pid": first["session_pid"]})

    async def new_registration() -> db.Row | None:
        mine = [w for w in await live_workers(pool) if w["pid"] == worker.pid]
        return mine[0] if mine and mine[0]["id"] != first["id"] else None

    second = await eventually(new_registration, within=5)
    assert second is not None
    row = await wait_status(pool, job_id, "complete", within=10)
    assert row["worker_id"] == second["id"]
    assert row["attempts"] == 2
    assert await jobs.complete(pool, old_claim, b"\x89PNG\r\n\x1a\n-late") is False
    image = await rows(pool, "SELECT png FROM job_images WHERE job_id = %(id)s", {"id": job_id})
    assert not bytes(image[0]["png"]).endswith(b"-late")
    assert "lost its session" in worker.log()


async def test_sigterm_lets_the_running_job_finish_within_the_grace_period(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Graceful stop (issue 3.9): SIGTERM mid-job; the job completes within GPUQUEUE_GRACE_S,
    no further job is claimed, the worker is marked stopped, the exit code is 0."""
    worker = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="0.8", GPUQUEUE_GRACE_S="10")
    registered = await worker.registered(pool)
    job_id = await submit(pool, conversation_id, alice)
    waiting = await submit(pool, conversation_id, alice)
    await wait_status(pool, job_id, "processing")
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    assert await status_of(pool, job_id) == "complete"
    assert await status_of(pool, waiting) == "queued"
    stopped = await rows(
        pool, "SELECT stopped_at FROM workers WHERE id = %(id)s", {"id": registered["id"]}
    )
    assert stopped[0]["stopped_at"] is not None
    assert await gpu_locks(pool) == []


async def test_sigterm_past_the_grace_period_requeues_the_job_without_counting_it(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Graceful stop (issue 3.9): a job that does not end within the grace period is handed
    back to the queue at its place, the attempt not counted, and the worker exits 0."""
    worker = spawn_worker("cuda:0", GPUQUEUE_GRACE_S="0.3")
    await worker.registered(pool)
    job_id = await submit(pool, conversation_id, alice, "[hang]", timeout_s=60, max_attempts=2)
    await wait_status(pool, job_id, "processing")
    worker.signal(signal.SIGTERM)
    assert await worker.wait(5) == 0
    seen = await job(pool, job_id)
    assert seen["status"] == "queued"
    assert seen["attempts"] == 0
    assert seen["queue_position"] == 1
    assert await gpu_locks(pool) == []


async def test_sigterm_while_waiting_for_the_gpu_lock_exits_at_once(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """R2.4 with a stop: a worker waiting for another's GPU (its device lock; no statement runs
    while it waits) stops promptly and exits 0, claiming nothing."""
    holder = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="30")
    await holder.registered(pool)
    busy = await submit(pool, conversation_id, alice)
    await wait_status(pool, busy, "processing")
    waiter = spawn_worker("cuda:0")
    await waiter.registered(pool)

    async def waiting_for_lock() -> bool:
        return "is in use by another process on this host" in waiter.log()

    await eventually(waiting_for_lock, within=5)
    started = time.monotonic()
    waiter.signal(signal.SIGTERM)
    assert await waiter.wait(5) == 0
    assert time.monotonic() - started < 2
    assert await status_of(pool, busy) == "processing"


async def test_a_step_that_never_returns_ends_the_process_and_frees_the_gpu(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Issue 3.4 last resort (R6.1, R6.2): a step that never returns ([stuck]) cannot be
    interrupted, so past the deadline plus GPUQUEUE_STUCK_GRACE_S the worker records the timeout
    and exits 75, which frees the GPU lock; the restarted worker takes the next job."""
    worker = spawn_worker("cuda:0", GPUQUEUE_STUCK_GRACE_S="0.5")
    await worker.registered(pool)
    stuck = await submit(pool, conversation_id, alice, "[stuck]", timeout_s=1, max_attempts=3)
    after = await submit(pool, conversation_id, alice, "fine")
    assert await worker.wait(10) == 75
    seen = await job(pool, stuck)
    assert seen["status"] == "error"
    assert seen["error"].startswith("timed out after 1.")
    assert "never returned" in seen["error"]
    assert await gpu_locks(pool) == []
    assert await status_of(pool, after) == "queued"
    restarted = spawn_worker("cuda:0")
    await restarted.registered(pool)
    await wait_status(pool, after, "complete")
    await wait_all_final(pool, [stuck, after])
