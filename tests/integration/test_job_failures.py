"""What belongs to one job fails that job, never the worker (issue 10, items 7 and 3).

A backend's output that is no PNG, an image the database will not store, a sweep that raises:
each ends in a message (on the job, or in the log) while the worker goes on taking jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from harness.commands import WorkerChild
from harness.waiting import eventually
from queueing import db
from queueing.actors import Actor
from tests.integration.worker_support import (
    InProcessWorker,
    gpu_locks,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    start_worker_fixture,  # noqa: F401  (the start_worker fixture)
    submit,
    wait_status,
)

SpawnWorker = Callable[..., WorkerChild]
StartWorker = Callable[..., InProcessWorker]

# Test instrumentation in the test's own database: a trigger that refuses, with a CHECK
# violation's SQLSTATE (what a constraint of ours raises), a write the test names.
REFUSE = """
CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'refused by the test' USING ERRCODE = '23514';
END
$$;
"""


async def _execute(pool: db.Pool, statement: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(statement)


async def test_a_backend_output_that_is_not_a_png_fails_its_job_and_the_worker_goes_on(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Item 7: a result that is no PNG ends its job `error` with a message that says so, without
    a retry (the same request gives the same output); the process takes the next job."""
    worker = spawn_worker("cuda:0")
    await worker.registered(pool)
    bad = await submit(pool, conversation_id, alice, "[badpng] a fox", max_attempts=3)
    good = await submit(pool, conversation_id, alice, "a fox")
    failed = await wait_status(pool, bad, "error")
    assert failed["error"].startswith("the backend's output is not a PNG image: "), failed["error"]
    assert failed["attempts"] == 1
    await wait_status(pool, good, "complete")
    assert worker.alive(), worker.log()
    assert await gpu_locks(pool) == []


async def test_an_image_the_database_refuses_fails_its_job_and_the_worker_goes_on(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker
) -> None:
    """Item 7: storing the result raises something that is not a lost connection (here a CHECK
    violation, which the queue turns into InvalidData): the job ends `error` with the reason,
    the GPU lock is released, and the worker takes the next job."""
    refused = await submit(pool, conversation_id, alice, "refused")
    await _execute(pool, REFUSE)
    await _execute(
        pool,
        "CREATE TRIGGER test_refuse BEFORE INSERT ON job_images FOR EACH ROW"
        f" WHEN (NEW.job_id = '{refused}') EXECUTE FUNCTION test_refuse()",
    )
    worker = start_worker("cuda:0")
    good = await submit(pool, conversation_id, alice, "stored")
    failed = await wait_status(pool, refused, "error")
    assert failed["error"] == "the job's image could not be stored: refused by the test"
    await wait_status(pool, good, "complete")
    assert not worker.task.done()
    assert await gpu_locks(pool) == []


async def test_a_sweep_that_raises_is_logged_once_and_the_worker_goes_on(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker,
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Item 3, the sweeper's side: a sweep that raises (here the requeue of a lost job is
    refused) logs the error and the next sweep runs; the worker keeps taking jobs, and once the
    cause is gone the lost job is taken back and run."""
    caplog.set_level(logging.INFO, logger="gpu_worker.sweeper")
    doomed = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="60")
    await doomed.registered(pool)
    lost = await submit(pool, conversation_id, alice, "lost", max_attempts=3)
    await wait_status(pool, lost, "processing")
    await _execute(pool, REFUSE)
    await _execute(
        pool,
        "CREATE TRIGGER test_refuse BEFORE UPDATE ON jobs FOR EACH ROW"
        f" WHEN (OLD.id = '{lost}' AND NEW.status = 'queued') EXECUTE FUNCTION test_refuse()",
    )
    sweeper = start_worker("cuda:1")
    await doomed.kill()

    def sweep_errors() -> list[logging.LogRecord]:
        """ERROR records that tell of the refusal, in their message or their exception."""
        return [
            r for r in caplog.records
            if r.levelno == logging.ERROR and "refused by the test" in (
                r.getMessage() + str(r.exc_info[1] if r.exc_info else ""))
        ]  # fmt: skip

    async def sweep_failed() -> bool:
        return bool(sweep_errors())

    await eventually(sweep_failed, within=10)
    later = await submit(pool, conversation_id, alice, "later")
    await wait_status(pool, later, "complete")
    assert not sweeper.task.done()
    assert await wait_status(pool, lost, "processing", within=0)
    assert len(sweep_errors()) == 1  # the same failure, round after round, is said once
    assert sweep_errors()[0].name == "gpu_worker.sweeper"

    await _execute(pool, "DROP TRIGGER test_refuse ON jobs")
    done = await wait_status(pool, lost, "complete")
    assert str(done["worker_id"]) == sweeper.worker.worker_id
    assert done["attempts"] == 2
    assert "sweeping again after" in caplog.text


async def test_a_type_error_from_the_pipeline_call_fails_its_job_at_once(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Issue 13 item 1: a TypeError, ValueError or AttributeError from the pipeline call cannot
    succeed on a retry (the same arguments give the same error), so the job ends `error` after
    its first attempt with the exception's message, and the worker takes the next job."""
    worker = spawn_worker("cuda:0")
    await worker.registered(pool)
    bad = await submit(pool, conversation_id, alice, "[badargs] a fox", max_attempts=3)
    good = await submit(pool, conversation_id, alice, "a fox")
    failed = await wait_status(pool, bad, "error")
    assert failed["attempts"] == 1
    assert "[badargs]" in failed["error"], failed["error"]
    await wait_status(pool, good, "complete")
    assert worker.alive(), worker.log()
