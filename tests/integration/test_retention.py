"""Retention (issue 10, item 12; contract: Operations): the sweep removes the rows of workers
that are gone, and `gpuqueue prune` deletes the events (and images) of jobs finished long ago,
in batches that never wait on the queue."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from typing import Any

import pytest

from harness.waiting import eventually
from queueing import db, jobs, workers
from queueing.actors import Actor
from queueing.retention import parse_duration, prune
from tests.helpers import worker_session

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 16


async def rows(conn: db.Db, query: str, params: dict[str, Any] | None = None) -> list[db.Row]:
    async with db.connection(conn) as c:
        cur = await c.execute(query.encode(), params)
        return await cur.fetchall() if cur.description else []


async def worker_ids(pool: db.Pool) -> set[Any]:
    return {row["id"] for row in await rows(pool, "SELECT id FROM workers")}


async def enqueue(pool: db.Pool, actor: Actor, conversation_id: str) -> str:
    job = await jobs.enqueue(
        pool, conversation_id, jobs.JobRequest("p", {}), actor=actor, max_queued=100
    )
    return str(job["job_id"])


async def test_the_sweep_removes_gone_workers_but_not_one_its_job_still_names(
    pool: db.Pool, database_url: str, alice: Actor, conversation_id: str
) -> None:
    """Live workers stay. One whose session ended is marked stopped at the next sweep, and a row
    stopped for an hour is removed; a gone worker whose job the sweep could not requeue yet (its
    row locked) stays until it has been."""
    live, live_id = await worker_session(database_url, "cuda:0")
    stopped, stopped_id = await worker_session(database_url, "cuda:1")
    closed, closed_id = await worker_session(database_url, "cuda:2")
    busy, busy_id = await worker_session(database_url, "cuda:3")
    await workers.mark_stopped(pool, stopped_id)
    await closed.close()
    job_id = await enqueue(pool, alice, conversation_id)
    claim = await jobs.lock_and_claim(busy, busy_id)
    assert claim is not None and str(claim.job_id) == job_id
    await busy.close()

    async def stopped_ones() -> set[Any]:
        found = await rows(pool, "SELECT id FROM workers WHERE stopped_at IS NOT NULL")
        return {row["id"] for row in found}

    async def an_hour_passes() -> None:
        await rows(pool, "UPDATE workers SET stopped_at = stopped_at - interval '61 minutes'"
                         " WHERE stopped_at IS NOT NULL")  # fmt: skip

    locker = await db.connect(database_url, "gpuqueue-test-locker")
    async with locker.transaction():
        await locker.execute(b"SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))

        async def all_gone_marked() -> bool:
            await jobs.requeue_lost(pool)
            return await stopped_ones() == {stopped_id, closed_id, busy_id}

        await eventually(all_gone_marked)
        assert await worker_ids(pool) == {live_id, stopped_id, closed_id, busy_id}
        await an_hour_passes()
        await jobs.requeue_lost(pool)
        assert await worker_ids(pool) == {live_id, busy_id}  # its job is still processing
        assert (await rows(pool, "SELECT status FROM jobs"))[0]["status"] == "processing"
    await locker.close()

    await jobs.requeue_lost(pool)  # requeues the job; its worker has been stopped for an hour
    assert await worker_ids(pool) == {live_id}
    job = (await rows(pool, "SELECT status, worker_id FROM jobs"))[0]
    assert job["status"] == "queued" and job["worker_id"] is None
    await stopped.close()
    await live.close()


async def test_prune_removes_what_old_finished_jobs_left_and_nothing_else(
    pool: db.Pool, database_url: str, alice: Actor, conversation_id: str
) -> None:
    """Old complete, error and canceled jobs lose their events (and images with --images); new
    finished, queued and running jobs keep theirs; the jobs themselves stay. It runs in batches
    and finishes while every job row is locked by someone else."""
    locker = await db.connect(database_url, "gpuqueue-test-locker")
    session, worker_id = await worker_session(database_url)
    old = {}
    for status in ("complete", "error", "canceled", "complete"):
        job_id = await enqueue(pool, alice, conversation_id)
        if status == "canceled":
            await jobs.cancel(pool, job_id, actor=alice)
        else:
            claim = await jobs.lock_and_claim(session, worker_id)
            assert claim is not None
            if status == "complete":
                assert await jobs.complete(session, claim, PNG, release_device=claim.gpu_lock)
            else:
                await jobs.fail(
                    session, claim, "bad", retryable=False, backoff=jobs.Backoff(),
                    release_device=claim.gpu_lock,
                )  # fmt: skip
        old[job_id] = status
    await rows(
        pool,
        "UPDATE jobs SET finished_at = finished_at - interval '2 days' WHERE id = ANY(%(ids)s)",
        {"ids": list(old)},
    )
    recent = await enqueue(pool, alice, conversation_id)
    claim = await jobs.lock_and_claim(session, worker_id)
    assert claim is not None and await jobs.complete(
        session, claim, PNG, release_device=claim.gpu_lock
    )
    running = await enqueue(pool, alice, conversation_id)
    running_claim = await jobs.lock_and_claim(session, worker_id)
    assert running_claim is not None and str(running_claim.job_id) == running
    queued = await enqueue(pool, alice, conversation_id)

    async def events_of(job_id: str) -> int:
        found = await rows(pool, "SELECT count(*) AS n FROM job_events WHERE job_id = %(id)s",
                           {"id": job_id})  # fmt: skip
        return int(found[0]["n"])

    kept_before = {j: await events_of(j) for j in (recent, running, queued)}
    async with locker.transaction():
        await locker.execute(b"SELECT 1 FROM jobs FOR UPDATE")
        async with asyncio.timeout(30):
            first = await prune(pool, timedelta(days=1), images=False, batch_size=1)
    await locker.close()
    assert (first.jobs, first.images) == (4, 0) and first.events == 4 * 4 - 1  # canceled: 3
    assert [await events_of(j) for j in old] == [0, 0, 0, 0]
    assert {j: await events_of(j) for j in (recent, running, queued)} == kept_before
    images = {r["job_id"] for r in await rows(pool, "SELECT job_id::text FROM job_images")}
    assert len(images) == 3

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gpuqueue.cli", "--database-url", database_url,
        "prune", "--finished-before", "1d", "--images",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    printed = stdout.decode()
    assert printed.startswith("removed 0 event(s) and 2 image(s) of 2 job(s) finished "), printed
    images = {r["job_id"] for r in await rows(pool, "SELECT job_id::text FROM job_images")}
    assert images == {recent}
    statuses = {r["id"]: r["status"] for r in await rows(pool, "SELECT id::text, status FROM jobs")}
    assert {j: statuses[j] for j in old} == old and len(statuses) == 7
    await session.close()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
     ("1d12h", 129600), ("3600", 3600), ("1.5h", 5400)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "-1d", "1d soon"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
