"""A job waiting out its retry's backoff (issue 10, item 13): it keeps its place in line (its
queue_position stays unique and 1-based, the place it is taken from once run_after has passed)
while later jobs are claimed past it, and its eta_s is never earlier than its run_after."""

from __future__ import annotations

from datetime import UTC, datetime

from queueing import db, jobs
from queueing.actors import Actor
from tests.integration.web_support import HandWorker


async def test_a_retrying_job_keeps_its_place_and_starts_no_earlier_than_run_after(
    pool: db.Pool, alice: Actor, conversation_id: str, worker: HandWorker
) -> None:
    async def submit() -> str:
        job = await jobs.enqueue(
            pool, conversation_id, jobs.JobRequest("p", {}), actor=alice, max_queued=100
        )
        return str(job["job_id"])

    await submit()
    await worker.complete(await worker.claim())  # a finished job: the ETA knows a duration
    retrying, later, last = await submit(), await submit(), await submit()
    claim = await worker.claim()
    assert str(claim.job_id) == retrying and worker.conn is not None
    backoff = jobs.Backoff(base_s=200.0, cap_s=200.0)  # the first retry waits 100-200 s
    assert await jobs.fail(
        worker.conn, claim, "flaky", retryable=True, backoff=backoff, release_device=claim.gpu_lock
    ) == "queued"  # fmt: skip

    claim = await worker.claim()
    assert str(claim.job_id) == later  # claimed past the retrying job

    listed = {
        j["job_id"]: j for j in (await jobs.list_jobs(pool, conversation_id, actor=alice))["jobs"]
    }
    job = await jobs.get_job(pool, retrying, actor=alice)
    wait_s = (datetime.fromisoformat(job["run_after"]) - datetime.now(UTC)).total_seconds()
    assert wait_s > 90
    for shown in (job, listed[retrying]):
        assert shown["queue_position"] == 1
        assert shown["eta_s"] is not None and shown["eta_s"] >= wait_s - 1
    assert listed[last]["queue_position"] == 2
    assert listed[last]["eta_s"] is not None and listed[last]["eta_s"] < 90
