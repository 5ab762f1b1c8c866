"""Positions recorded by transitions are exact (issue 10, item 4): a job that fails or is handed
back re-enters the queue with the position it really took, also when many do at once. Each event
is checked against a replay of the events before it (seq order is commit order), so two jobs
never hold one position at any point of the log."""

from __future__ import annotations

import asyncio
from typing import Any

from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from tests.helpers import worker_session

ROUNDS = 3
WORKERS = 24


async def replay_mismatches(pool: db.Pool) -> list[dict[str, Any]]:
    """Every 'queued' event whose position is not its rank among the jobs queued right after it."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            b"SELECT e.seq, e.job_id, e.status, e.queue_position, j.priority, j.queue_seq "
            b"FROM job_events AS e JOIN jobs AS j ON j.id = e.job_id ORDER BY e.seq"
        )
        events = await cur.fetchall()
    queued: dict[Any, tuple[int, int]] = {}
    wrong = []
    for event in events:
        queued.pop(event["job_id"], None)
        if event["status"] != "queued":
            continue
        key = (-event["priority"], event["queue_seq"])
        queued[event["job_id"]] = key
        rank = 1 + sum(1 for other in queued.values() if other < key)
        if event["queue_position"] != rank:
            wrong.append({**event, "rank": rank})
    return wrong


async def test_concurrent_failures_and_requeues_record_the_positions_they_took(
    pool: db.Pool, database_url: str, alice: Actor, conversation_id: str
) -> None:
    """24 running jobs end at once from 24 sessions, half failing with a retry and half handed
    back, three rounds: every recorded position equals the job's rank at that point of the log."""
    for _ in range(WORKERS + 6):  # six more that stay queued behind them
        await jobs.enqueue(
            pool,
            conversation_id,
            jobs.JobRequest("p", {}, max_attempts=10),
            actor=alice,
            max_queued=100,
        )
    sessions = [await worker_session(database_url, f"cuda:{i}") for i in range(WORKERS)]

    async def claim(index: int) -> jobs.Claim:
        session, worker_id = sessions[index]

        async def next_claim() -> jobs.Claim | None:
            return await jobs.lock_and_claim(session, worker_id)

        return await eventually(next_claim)

    for _ in range(ROUNDS):
        claims = [await claim(i) for i in range(WORKERS)]

        async def end(index: int, claim: jobs.Claim) -> str | None:
            session = sessions[index][0]
            if index % 2:
                return await jobs.requeue(session, claim, release_device=claim.gpu_lock)
            return await jobs.fail(
                session,
                claim,
                "boom",
                retryable=True,
                backoff=jobs.Backoff(0.001, 0.001),
                release_device=claim.gpu_lock,
            )

        ended = await asyncio.gather(*(end(i, c) for i, c in enumerate(claims)))
        assert ended == ["queued"] * WORKERS
    assert await replay_mismatches(pool) == []
    for session, _ in sessions:
        await session.close()
