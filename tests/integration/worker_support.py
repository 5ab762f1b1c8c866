"""What the worker tests share: enqueueing, reading jobs back, and running workers.

Workers run either in this process (a Worker task on the test's event loop, for behaviour that
is about the queue) or as `gpuqueue worker` subprocesses (harness/commands.py's WorkerChild, for
behaviour that is about processes: signals, kill -9, exit codes, memory). This module holds no
tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from gpu_worker.backends.stub import StubBackend
from gpu_worker.worker import Worker, WorkerConfig
from harness.commands import WorkerChild
from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from queueing.jobs import JobRequest
from tests.queries import TEST_QUERIES

FINAL = ("complete", "error", "canceled")


async def seed(
    pool: db.Pool,
    actor: Actor,
    conversation_id: str,
    n: int,
    status: str,
    params: dict[str, Any] | None = None,
) -> None:
    """n bulk jobs in `status` with `params`, after every job there (no events: the scale
    tests' rows)."""
    async with pool.connection() as conn:
        await conn.execute(
            TEST_QUERIES["seed_jobs"],
            {
                "n": n,
                "status": status,
                "conversation_id": conversation_id,
                "user_id": actor.user_id,
                "params": Jsonb(params or {}),
            },
        )


SUBMITTED = {"width": 64, "height": 64, "steps": 4, "seed": 1}  # what submit() asks for


async def submit(
    pool: db.Db,
    conversation_id: str,
    actor: Actor,
    prompt: str = "a red fox",
    *,
    priority: int = 0,
    max_attempts: int = 1,
    timeout_s: int = 60,
    **params: Any,
) -> str:
    """Enqueue one job (SUBMITTED's parameters unless given) and return its id."""
    params = {**SUBMITTED, **params}
    job = await jobs.enqueue(
        pool,
        conversation_id,
        JobRequest(
            prompt, params, priority=priority, max_attempts=max_attempts, timeout_s=timeout_s
        ),
        actor=actor,
        max_queued=10_000,
    )
    return str(job["job_id"])


async def submit_many(
    pool: db.Pool, conversation_id: str, actor: Actor, n: int, prompt: str = "job"
) -> list[str]:
    return [await submit(pool, conversation_id, actor, f"{prompt} {i}") for i in range(n)]


async def job(pool: db.Pool, job_id: str) -> dict[str, Any]:
    """The job as the API shows it (an admin's view)."""
    return await jobs.get_job(pool, job_id, actor=Actor(0, "admin", is_admin=True))


async def rows(pool: db.Pool, query: str, params: dict[str, Any] | None = None) -> list[db.Row]:
    """Inspect the database directly (pg_locks, intervals): what the tests check, not the code."""
    async with pool.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def status_of(pool: db.Pool, job_id: str) -> str:
    found = await rows(pool, "SELECT status FROM jobs WHERE id = %(id)s", {"id": job_id})
    return str(found[0]["status"])


async def wait_status(
    pool: db.Pool, job_id: str, wanted: str | tuple[str, ...], *, within: float = 10.0
) -> dict[str, Any]:
    """Wait until the job reaches `wanted`; return its row."""
    accept = (wanted,) if isinstance(wanted, str) else wanted

    async def probe() -> dict[str, Any] | None:
        found = await rows(pool, "SELECT * FROM jobs WHERE id = %(id)s", {"id": job_id})
        return found[0] if found and found[0]["status"] in accept else None

    found = await eventually(probe, within=within)
    assert found is not None
    return found


async def wait_all_final(pool: db.Pool, job_ids: list[str], *, within: float = 20.0) -> None:
    async def probe() -> bool:
        found = await rows(
            pool,
            "SELECT count(*) AS n FROM jobs WHERE id = ANY(%(ids)s) AND status = ANY(%(f)s)",
            {"ids": job_ids, "f": list(FINAL)},
        )
        return int(found[0]["n"]) == len(job_ids)

    await eventually(probe, within=within, interval=0.05)


async def gpu_locks(pool: db.Pool) -> list[db.Row]:
    """GPU advisory locks held right now (from pg_locks), whoever holds them."""
    return await rows(
        pool,
        "SELECT l.pid, l.objid FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database"
        " WHERE d.datname = current_database() AND l.locktype = 'advisory'"
        " AND l.classid = 26450 AND l.objsubid = 2 AND l.granted",
    )


async def live_workers(pool: db.Pool, device: str | None = None) -> list[db.Row]:
    found = await rows(pool, "SELECT * FROM live_workers ORDER BY started_at")
    return [w for w in found if device is None or w["device"] == device]


def fast_config(**overrides: Any) -> WorkerConfig:
    """Short intervals, so waiting on the worker takes little test time."""
    base: dict[str, Any] = {
        "poll_interval_s": 0.2,
        "sweep_interval_s": 0.2,
        "probe_interval_s": 0.1,
        "stuck_grace_s": 2.0,
    }
    return WorkerConfig(**{**base, **overrides})


class InProcessWorker:
    """A Worker running as a task on the test's loop; stopped (and awaited) by the fixture."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task: asyncio.Task[int] = asyncio.create_task(worker.run())

    async def stop(self) -> int:
        self.worker.request_stop()
        return await asyncio.wait_for(self.task, 10)


@pytest.fixture(name="start_worker")
async def start_worker_fixture(
    database_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., InProcessWorker]]:
    """start_worker(device=..., delay=..., **config) -> a running in-process stub worker. Its
    device lock files live in the test's own folder, apart from every other test's workers."""
    started: list[InProcessWorker] = []

    def start(device: str = "cuda:0", delay: float = 0.0, **config: Any) -> InProcessWorker:
        worker = Worker(
            database_url,
            device=device,
            backend=StubBackend(delay=delay),
            backend_name="stub",
            config=fast_config(**{"gpu_lock_dir": tmp_path / "gpu-locks", **config}),
        )
        handle = InProcessWorker(worker)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        if not handle.task.done():
            handle.worker.request_stop(immediately=True)
    for handle in started:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(handle.task, 10)


@pytest.fixture(name="spawn_worker")
async def spawn_worker_fixture(
    database_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., WorkerChild]]:
    """spawn_worker(device=..., backend="stub", args=(), prefix=(), **env) -> a `gpuqueue
    worker` subprocess (harness/commands.py), killed at the end; device lock files in the test's
    own folder unless env names others."""
    spawned: list[WorkerChild] = []

    def spawn(
        device: str = "cuda:0",
        backend: str = "stub",
        *,
        args: Sequence[str] = (),
        prefix: Sequence[str] = (),
        **env: str,
    ) -> WorkerChild:
        base = {
            "GPUQUEUE_POLL_INTERVAL_S": "0.2",
            "GPUQUEUE_SWEEP_INTERVAL_S": "0.2",
            "GPUQUEUE_GPU_LOCK_DIR": str(tmp_path / "gpu-locks"),
        }
        worker = WorkerChild(
            database_url,
            tmp_path / f"worker-{len(spawned)}.log",
            device=device,
            backend=backend,
            args=args,
            env={**base, **env},
            prefix=prefix,
        )
        spawned.append(worker)
        return worker

    yield spawn
    for worker in spawned:
        await worker.kill()
