"""The batch claim on the real database (issue 13 item 4; contract: Batching).

One statement takes the GPU lock and claims the head job of the worker's model with up to N-1
compatible jobs among the next 2N; each member gets its own claim, its own processing event and
`"batch": {"id", "size"}` in its JSON; the sweep takes back every member of a lost batch.
"""

from __future__ import annotations

from typing import Any

from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from tests.helpers import assert_permutation_in_claim_order, queue_snapshot, worker_session
from tests.integration.web_support import PNG
from tests.integration.worker_support import gpu_locks, job, rows, submit


async def _claim_batch(conn: db.Connection, worker_id: Any, n: int) -> list[jobs.Claim]:
    return await jobs.lock_and_claim_batch(conn, worker_id, n)


async def test_a_batch_is_the_head_job_and_the_next_compatible_ones_in_claim_order(
    pool: db.Pool, database_url: str, conversation_id: str, alice: Actor
) -> None:
    """Same width, height, steps, guidance and negative prompt as the head; others are left,
    and those left keep positions 1..n in claim order."""
    head = await submit(pool, conversation_id, alice, "head", guidance_scale=7.5)
    wide = await submit(pool, conversation_id, alice, "wide", width=128, guidance_scale=7.5)
    same1 = await submit(pool, conversation_id, alice, "same 1", guidance_scale=7.5)
    negative = await submit(
        pool, conversation_id, alice, "neg", guidance_scale=7.5, negative_prompt="blur"
    )
    same2 = await submit(pool, conversation_id, alice, "same 2", guidance_scale=7.5, seed=9)
    same3 = await submit(pool, conversation_id, alice, "same 3", guidance_scale=7.5)
    conn, worker_id = await worker_session(database_url)
    try:
        claims = await _claim_batch(conn, worker_id, 3)
        assert [str(c.job_id) for c in claims] == [head, same1, same2]
        assert len({c.claim_id for c in claims}) == 3
        assert all(c.batch_size == 3 for c in claims)
        shown = [await job(pool, j) for j in (head, same1, same2)]
        assert {s["status"] for s in shown} == {"processing"}
        batch = shown[0]["batch"]
        assert batch is not None and batch["size"] == 3
        assert all(s["batch"] == batch for s in shown)
        for s in shown:
            assert [t["status"] for t in s["transitions"]] == ["pending", "queued", "processing"]
        left = {j: await job(pool, j) for j in (wide, negative, same3)}
        assert [left[j]["queue_position"] for j in (wide, negative, same3)] == [1, 2, 3]
        assert all(s["batch"] is None for s in left.values())
        assert_permutation_in_claim_order(await queue_snapshot(pool))
        assert len(await gpu_locks(pool)) == 1
        # The GPU is busy: another worker on it gets nothing.
        other, other_id = await worker_session(database_url)
        try:
            assert await _claim_batch(other, other_id, 3) == []
        finally:
            await other.close()
        for claim in claims:
            assert await jobs.complete(conn, claim, PNG, release_device=None)
        assert await jobs.release_gpu(conn, claims[0].gpu_lock)
        # One job alone: no batch.
        alone = await _claim_batch(conn, worker_id, 1)
        assert [str(c.job_id) for c in alone] == [wide]
        assert (await job(pool, wide))["batch"] is None
    finally:
        await conn.close()


async def test_only_the_next_2n_positions_are_looked_at(
    pool: db.Pool, database_url: str, conversation_id: str, alice: Actor
) -> None:
    """With N = 2 the window is the 4 jobs after the head: a compatible job behind them waits."""
    head = await submit(pool, conversation_id, alice, "head")
    for i in range(4):
        await submit(pool, conversation_id, alice, f"other {i}", width=128)
    far = await submit(pool, conversation_id, alice, "far")
    conn, worker_id = await worker_session(database_url)
    try:
        claims = await _claim_batch(conn, worker_id, 2)
        assert [str(c.job_id) for c in claims] == [head]
        assert claims[0].batch_size == 1 and (await job(pool, head))["batch"] is None
        assert (await job(pool, far))["status"] == "queued"
    finally:
        await conn.close()


async def test_the_processing_events_of_a_batch_commit_together_once_each(
    pool: db.Pool, database_url: str, conversation_id: str, alice: Actor
) -> None:
    """Each member's processing transition is its own event; the jobs behind them are not
    given an event each (their positions move once, with the claim's commit)."""
    ids = [await submit(pool, conversation_id, alice, f"job {i}") for i in range(6)]
    before = (await rows(pool, "SELECT max(seq) AS s FROM job_events"))[0]["s"]
    conn, worker_id = await worker_session(database_url)
    try:
        claims = await _claim_batch(conn, worker_id, 4)
        assert [str(c.job_id) for c in claims] == ids[:4]
        events = await rows(
            pool,
            "SELECT job_id::text AS job_id, status, queue_position FROM job_events"
            " WHERE seq > %(s)s ORDER BY seq",
            {"s": before},
        )
        assert [(e["job_id"], e["status"], e["queue_position"]) for e in events] == [
            (j, "processing", 0) for j in ids[:4]
        ]
        assert [(await job(pool, j))["queue_position"] for j in ids[4:]] == [1, 2]
    finally:
        await conn.close()


async def test_the_sweep_takes_back_every_member_of_a_lost_batch(
    pool: db.Pool, database_url: str, conversation_id: str, alice: Actor
) -> None:
    """Crash recovery stays exact: a batch's session dies, and each member goes back to the
    queue at its place, with its own queued event; the GPU lock died with the session."""
    ids = [await submit(pool, conversation_id, alice, f"job {i}", max_attempts=3) for i in range(3)]
    conn, worker_id = await worker_session(database_url)
    claims = await _claim_batch(conn, worker_id, 3)
    assert len(claims) == 3
    await conn.close()

    async def swept() -> bool:
        await jobs.requeue_lost(pool)
        found = await rows(pool, "SELECT status FROM jobs WHERE id = ANY(%(ids)s)", {"ids": ids})
        return {r["status"] for r in found} == {"queued"}

    await eventually(swept, within=10)
    assert [(await job(pool, j))["queue_position"] for j in ids] == [1, 2, 3]
    assert await gpu_locks(pool) == []
    assert_permutation_in_claim_order(await queue_snapshot(pool))


async def test_the_cost_model_counts_a_batched_jobs_share_of_its_call(
    pool: db.Pool, database_url: str, conversation_id: str, alice: Actor
) -> None:
    """A member's run-time sample is the batch's run time over its size (the GPU time it
    used), so ETAs follow what batching does to throughput."""
    ids = [await submit(pool, conversation_id, alice, f"job {i}") for i in range(2)]
    conn, worker_id = await worker_session(database_url)
    try:
        claims = await _claim_batch(conn, worker_id, 2)
        for claim in claims:
            assert await jobs.complete(conn, claim, PNG, release_device=None)
        spans = await rows(
            pool,
            "SELECT extract(epoch FROM finished_at - started_at)::float8 AS s FROM jobs"
            " WHERE id = ANY(%(ids)s)",
            {"ids": ids},
        )
        samples = await db.fetch_all(pool, "cost_samples", {"window": 100})
        assert len(samples) == 1 and samples[0]["samples"] == 2
        expected = sum(r["s"] for r in spans) / 2 / 2
        assert abs(samples[0]["mean_run_s"] - expected) < 1e-6
    finally:
        await conn.close()
