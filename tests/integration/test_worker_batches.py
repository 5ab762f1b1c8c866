"""Batching through real `gpuqueue worker --max-batch N` processes (issue 13 item 4; contract:
Batching), with the stub backend, which batches as a pipeline does: one delay per call.

Every member keeps its own events, progress, seed, timeout, cancel and final state; a member
canceled or timed out ends alone; a failed call is run again with each member alone; the GPU
lock is released when the last member ends; a lost batch is swept back whole.
"""

from __future__ import annotations

from collections.abc import Callable

from gpu_worker.backends.stub import render_png
from harness.commands import WorkerChild
from queueing import db, jobs
from queueing.actors import Actor
from tests.helpers import assert_permutation_in_claim_order, queue_snapshot
from tests.integration.worker_support import (
    InProcessWorker,
    gpu_locks,
    job,
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    start_worker_fixture,  # noqa: F401  (the start_worker fixture)
    submit,
    wait_all_final,
    wait_status,
)

SpawnWorker = Callable[..., WorkerChild]
StartWorker = Callable[..., InProcessWorker]


async def _image(pool: db.Pool, job_id: str) -> bytes:
    found = await rows(pool, "SELECT png FROM job_images WHERE job_id = %(id)s", {"id": job_id})
    return bytes(found[0]["png"])


async def test_compatible_jobs_run_as_one_batch_each_with_its_own_image_events_and_progress(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Four compatible queued jobs start in one call: one batch id, size 4, the same start;
    each has its own seed's image, its own progress and its own processing and complete
    events; an incompatible job (another size) waits for the next call; no lock is left."""
    ids = [await submit(pool, conversation_id, alice, f"fox {i}", seed=i) for i in range(4)]
    other = await submit(pool, conversation_id, alice, "wide fox", width=128)
    worker = spawn_worker("cuda:0", args=("--max-batch", "4"), GPUQUEUE_STUB_DELAY="0.6")
    await wait_all_final(pool, [*ids, other])
    shown = [await job(pool, j) for j in ids]
    assert {s["status"] for s in shown} == {"complete"}
    batch = shown[0]["batch"]
    assert batch is not None and batch["size"] == 4
    assert all(s["batch"] == batch for s in shown)
    assert len({s["started_at"] for s in shown}) == 1
    for i, s in enumerate(shown):
        assert [t["status"] for t in s["transitions"]][-2:] == ["processing", "complete"]
        assert s["progress"] is not None and s["progress"]["steps"] == 4
        assert await _image(pool, ids[i]) == render_png(f"fox {i}", i, 64, 64)
    alone = await job(pool, other)
    assert alone["status"] == "complete" and alone["batch"] is None
    assert await gpu_locks(pool) == []
    assert worker.alive(), worker.log()


async def test_a_member_canceled_or_timed_out_ends_alone_and_the_others_complete(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """A cancel of one member ends it canceled while the call goes on; a member past its own
    timeout_s ends `error` (timed out); the others complete with their images, and the GPU
    lock is held until the last of them ends."""
    keep = await submit(pool, conversation_id, alice, "keep", timeout_s=60)
    canceled = await submit(pool, conversation_id, alice, "cancel me", timeout_s=60)
    short = await submit(pool, conversation_id, alice, "short", timeout_s=1)
    worker = spawn_worker("cuda:0", args=("--max-batch", "3"), GPUQUEUE_STUB_DELAY="4")
    await wait_status(pool, keep, "processing", within=30)
    assert (await job(pool, canceled))["batch"]["size"] == 3
    await jobs.cancel(pool, canceled, actor=alice)
    await wait_status(pool, canceled, "canceled")
    assert (await job(pool, keep))["status"] == "processing"
    assert len(await gpu_locks(pool)) == 1  # the call still runs: the GPU is still taken
    timed_out = await wait_status(pool, short, "error")
    assert timed_out["error"].startswith("timed out after "), timed_out["error"]
    assert timed_out["attempts"] == 1
    await wait_status(pool, keep, "complete", within=30)
    assert await _image(pool, keep) == render_png("keep", 1, 64, 64)
    assert not await rows(pool, "SELECT 1 FROM job_images WHERE job_id = %(id)s", {"id": canceled})
    assert await gpu_locks(pool) == []
    assert worker.alive(), worker.log()


async def test_a_failed_call_runs_each_member_alone_so_the_bad_one_fails_alone(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """A batch whose call raises is run again one job at a time: the good jobs complete, the
    bad one fails on its own (a TypeError at once, without a retry)."""
    good = await submit(pool, conversation_id, alice, "good 1")
    bad = await submit(pool, conversation_id, alice, "[badargs] bad", max_attempts=3)
    also = await submit(pool, conversation_id, alice, "good 2")
    worker = spawn_worker("cuda:0", args=("--max-batch", "3"))
    await wait_all_final(pool, [good, bad, also])
    assert (await job(pool, good))["status"] == "complete"
    assert (await job(pool, also))["status"] == "complete"
    failed = await job(pool, bad)
    assert failed["status"] == "error" and failed["attempts"] == 1
    assert failed["batch"]["size"] == 3
    assert await _image(pool, also) == render_png("good 2", 1, 64, 64)
    assert await gpu_locks(pool) == []
    assert worker.alive(), worker.log()


async def test_a_batch_whose_worker_dies_is_swept_back_whole_and_run_again(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker,
    start_worker: StartWorker,
) -> None:  # fmt: skip
    """kill -9 mid-batch: the sweep requeues every member at its place (positions stay a
    permutation), and another worker runs them all to completion."""
    ids = [await submit(pool, conversation_id, alice, f"job {i}", max_attempts=3) for i in range(3)]
    doomed = spawn_worker("cuda:0", args=("--max-batch", "3"), GPUQUEUE_STUB_DELAY="60")
    for j in ids:
        await wait_status(pool, j, "processing", within=30)
    assert (await job(pool, ids[0]))["batch"]["size"] == 3
    await doomed.kill()
    start_worker("cuda:1")
    await wait_all_final(pool, ids, within=30)
    for j in ids:
        done = await job(pool, j)
        assert done["status"] == "complete" and done["attempts"] == 2, done
        assert done["batch"] is None
        assert "queued" in [t["status"] for t in done["transitions"][3:]]
    assert_permutation_in_claim_order(await queue_snapshot(pool))
    assert await gpu_locks(pool) == []


async def test_a_stop_past_the_grace_period_hands_every_member_back_at_its_place(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """SIGTERM mid-batch with a short grace: the whole call is interrupted, and each member is
    requeued in its own transition, its attempt not counted; the worker exits 0."""
    ids = [await submit(pool, conversation_id, alice, f"job {i}", max_attempts=3) for i in range(3)]
    worker = spawn_worker(
        "cuda:0", args=("--max-batch", "3"), GPUQUEUE_STUB_DELAY="4", GPUQUEUE_GRACE_S="0.3"
    )
    for j in ids:
        await wait_status(pool, j, "processing", within=30)
    assert await worker.stop(grace_s=15) == 0, worker.log()
    back = [await job(pool, j) for j in ids]
    assert [b["status"] for b in back] == ["queued"] * 3
    assert [b["queue_position"] for b in back] == [1, 2, 3]
    assert [b["attempts"] for b in back] == [0, 0, 0]
    assert await gpu_locks(pool) == []
