"""The job state machine on the real database: R3.1-3.3, R5.1-5.6, R6.5, fencing, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from queueing.conversations import get_conversation
from queueing.errors import IllegalTransition, InvalidData, NotFound
from tests import queries
from tests.integration.web_support import HandWorker

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 16
REQUEST = jobs.JobRequest(prompt="a lighthouse at dusk", params={"steps": 3, "seed": 1})


async def metadata_of(pool: db.Pool, actor: Actor, conversation_id: str, job_id: str) -> Any:
    conversation = await get_conversation(pool, conversation_id, actor=actor)
    for message in conversation["messages"]:
        if message["extra_metadata"].get("job_id") == job_id:
            return message["extra_metadata"]
    raise AssertionError("no message for the job")


def times(job: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(t["at"]) for t in job["transitions"]]


async def test_a_new_job_is_pending_then_queued_with_its_position_written(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """R5.1, R5.2, R3.1: the job starts pending, is queued, and its position is stored."""
    job = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    assert [t["status"] for t in job["transitions"]] == ["pending", "queued"]
    assert job["status"] == "queued" and job["queue_position"] == 1
    meta = await metadata_of(pool, alice, conversation_id, job["job_id"])
    assert meta["status"] == "queued" and meta["queue_position"] == 1


async def test_processing_then_complete_sets_position_zero_and_stamps_each_transition(
    pool: db.Pool, worker: HandWorker, alice: Actor, conversation_id: str
) -> None:
    """R5.3, R5.4, R5.6, R3.2, R3.3: processing and complete carry position 0 and their times."""
    job = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    claim = await worker.claim()
    assert str(claim.job_id) == job["job_id"]
    running = await jobs.get_job(pool, job["job_id"], actor=alice)
    assert running["status"] == "processing" and running["queue_position"] == 0
    assert (await metadata_of(pool, alice, conversation_id, job["job_id"]))["queue_position"] == 0
    assert await jobs.complete(worker.conn, claim, PNG, release_device=claim.gpu_lock)
    done = await jobs.get_job(pool, job["job_id"], actor=alice)
    assert done["status"] == "complete" and done["queue_position"] == 0
    # The route is the web's: it signs has_image into image_url (test_image_links checks it).
    assert done["has_image"] is True and "image_url" not in done
    assert [t["status"] for t in done["transitions"]] == [
        "pending",
        "queued",
        "processing",
        "complete",
    ]
    stamps = times(done)
    assert stamps == sorted(stamps) and stamps[-1] > stamps[1]
    assert done["started_at"] and done["finished_at"] and done["updated_at"] >= done["finished_at"]
    meta = await metadata_of(pool, alice, conversation_id, job["job_id"])
    assert meta["status"] == "complete" and meta["queue_position"] == 0
    assert await jobs.job_image(pool, job["job_id"], actor=alice) == PNG


async def test_a_failure_without_attempts_left_ends_in_error_with_its_message(
    pool: db.Pool, worker: HandWorker, alice: Actor, conversation_id: str
) -> None:
    """R5.5, R6.3: the failed job has status error and keeps the message a user can read."""
    request = jobs.JobRequest(prompt="x", params={}, max_attempts=1)
    job = await jobs.enqueue(pool, conversation_id, request, actor=alice, max_queued=100)
    claim = await worker.claim()
    status = await jobs.fail(
        worker.conn,
        claim,
        "CUDA out of memory",
        retryable=True,
        backoff=jobs.Backoff(),
        release_device=claim.gpu_lock,
    )
    assert status == "error"
    failed = await jobs.get_job(pool, job["job_id"], actor=alice)
    assert failed["status"] == "error" and failed["error"] == "CUDA out of memory"
    meta = await metadata_of(pool, alice, conversation_id, job["job_id"])
    assert meta["status"] == "error" and meta["error"] == "CUDA out of memory"


async def test_retries_back_off_longer_each_time_until_max_attempts(
    pool: db.Pool, worker: HandWorker, alice: Actor, conversation_id: str
) -> None:
    """R6.5: a failed job is retried with growing backoff, and ends in error at max_attempts."""
    request = jobs.JobRequest(prompt="x", params={}, max_attempts=4)
    job = await jobs.enqueue(pool, conversation_id, request, actor=alice, max_queued=100)
    backoff = jobs.Backoff(base_s=0.04, cap_s=10.0)
    statuses = []
    for attempt in range(1, 5):
        claim = await eventually(lambda: jobs.lock_and_claim(worker.conn, worker.worker_id))
        assert claim.attempts == attempt
        statuses.append(
            await jobs.fail(
                worker.conn,
                claim,
                f"boom {attempt}",
                retryable=True,
                backoff=backoff,
                release_device=claim.gpu_lock,
            )
        )
    assert statuses == ["queued", "queued", "queued", "error"]
    delays = [
        row["detail"]["retry_in_s"]
        for row in await queries.fetch_all(pool, "job_events_of", {"job_id": job["job_id"]})
        if row["status"] == "queued" and "retry_in_s" in row["detail"]
    ]
    assert len(delays) == 3
    assert delays[0] <= delays[1] <= delays[2] and delays[0] < delays[2]
    final = await jobs.get_job(pool, job["job_id"], actor=alice)
    assert final["error"] == "boom 4" and final["attempts"] == 4
    assert [t["status"] for t in final["transitions"]].count("processing") == 4


async def test_terminal_states_are_final(pool: db.Pool, alice: Actor, conversation_id: str) -> None:
    """A refused transition raises a clear error and writes nothing."""
    job = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    canceled = await jobs.cancel(pool, job["job_id"], actor=alice)
    assert canceled["status"] == "canceled"
    before = await jobs.get_job(pool, job["job_id"], actor=alice)
    with pytest.raises(IllegalTransition, match="already canceled"):
        await jobs.cancel(pool, job["job_id"], actor=alice)
    assert await jobs.get_job(pool, job["job_id"], actor=alice) == before


async def test_a_stale_claim_cannot_complete_or_fail_the_job(
    pool: db.Pool, worker: HandWorker, alice: Actor, conversation_id: str
) -> None:
    """Fencing: once a lost worker's job is requeued, its late complete and fail are no-ops."""
    job = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    claim = await worker.claim()
    await worker.close()  # the worker's session dies: it is no longer alive
    requeued = await eventually(lambda: jobs.requeue_lost(pool))
    assert [r["status"] for r in requeued] == ["queued"]
    assert not await jobs.complete(pool, claim, PNG)
    assert await jobs.fail(pool, claim, "late", retryable=False, backoff=jobs.Backoff()) is None
    assert await jobs.report_progress(pool, claim, 1, 3) is None
    again = await jobs.get_job(pool, job["job_id"], actor=alice)
    assert again["status"] == "queued" and again["queue_position"] == 1 and again["attempts"] == 1


async def test_a_lost_job_on_its_last_attempt_ends_in_error(
    pool: db.Pool, worker: HandWorker, alice: Actor, conversation_id: str
) -> None:
    request = jobs.JobRequest(prompt="x", params={}, max_attempts=1)
    job = await jobs.enqueue(pool, conversation_id, request, actor=alice, max_queued=100)
    await worker.claim()
    await worker.close()
    await eventually(lambda: jobs.requeue_lost(pool))
    lost = await jobs.get_job(pool, job["job_id"], actor=alice)
    assert lost["status"] == "error" and "worker" in lost["error"] and "lost" in lost["error"]


async def test_the_sweep_leaves_jobs_of_live_workers_alone(
    pool: db.Pool, worker: HandWorker, alice: Actor, conversation_id: str
) -> None:
    await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    claim = await worker.claim()
    assert await jobs.requeue_lost(pool) == []
    assert await jobs.complete(worker.conn, claim, PNG, release_device=claim.gpu_lock)


async def test_cancel_of_a_running_job_is_requested_then_finished_by_its_worker(
    pool: db.Pool, worker: HandWorker, alice: Actor, conversation_id: str
) -> None:
    job = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    claim = await worker.claim()
    requested = await jobs.cancel(pool, job["job_id"], actor=alice)
    assert requested["status"] == "processing" and requested["cancel_requested"] is True
    assert await jobs.report_progress(pool, claim, 1, 3) is True
    assert await jobs.claim_state(pool, claim) == (True, True)
    assert await jobs.finish_canceled(worker.conn, claim, release_device=claim.gpu_lock)
    assert (await jobs.get_job(pool, job["job_id"], actor=alice))["status"] == "canceled"


async def test_a_graceful_requeue_keeps_the_place_and_does_not_count_the_attempt(
    pool: db.Pool, worker: HandWorker, alice: Actor, conversation_id: str
) -> None:
    first = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    claim = await worker.claim()
    assert str(claim.job_id) == first["job_id"]
    assert await jobs.requeue(worker.conn, claim, release_device=claim.gpu_lock) == "queued"
    back = await jobs.get_job(pool, first["job_id"], actor=alice)
    assert back["queue_position"] == 1 and back["attempts"] == 0


async def test_another_users_job_is_not_found(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    job = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    mallory = Actor(user_id=alice.user_id + 1000, name="mallory")
    with pytest.raises(NotFound):
        await jobs.get_job(pool, job["job_id"], actor=mallory)
    with pytest.raises(NotFound):
        await jobs.cancel(pool, job["job_id"], actor=mallory)
    with pytest.raises(NotFound):
        await jobs.enqueue(pool, conversation_id, REQUEST, actor=mallory, max_queued=100)


async def test_a_rejected_enqueue_writes_nothing(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """R7.5: an enqueue that fails half-way (after the message insert) leaves no row behind."""
    with pytest.raises(InvalidData):
        await jobs.enqueue(
            pool,
            conversation_id,
            jobs.JobRequest(prompt="", params={}),
            actor=alice,
            max_queued=100,
        )
    conversation = await get_conversation(pool, conversation_id, actor=alice)
    assert conversation["messages"] == []
    assert await db.fetch_value(pool, "events_last_seq") == 0
