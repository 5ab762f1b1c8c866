"""Queue positions: unique, live, a permutation in claim order under concurrency (R1, R4, R9)."""

from __future__ import annotations

import asyncio
import contextlib
import random

from queueing import db, jobs
from queueing.actors import Actor
from queueing.conversations import create_conversation, get_conversation
from queueing.errors import IllegalTransition
from tests import queries
from tests.helpers import assert_permutation_in_claim_order, queue_snapshot, worker_session

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 16


def request(priority: int = 0) -> jobs.JobRequest:
    return jobs.JobRequest(prompt="p", params={}, priority=priority)


async def enqueue(pool: db.Pool, actor: Actor, conversation_id: str, priority: int = 0) -> dict:
    return await jobs.enqueue(
        pool, conversation_id, request(priority), actor=actor, max_queued=10_000
    )


async def test_every_job_gets_its_own_position(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """R1.1: no two queued jobs share a position."""
    created = [await enqueue(pool, alice, conversation_id) for _ in range(10)]
    assert [j["queue_position"] for j in created] == list(range(1, 11))
    listed = (await jobs.list_jobs(pool, conversation_id, actor=alice))["jobs"]
    assert [j["queue_position"] for j in listed] == list(range(1, 11))


async def test_concurrent_enqueues_return_exactly_one_to_n(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """R1.5, R9.1: 100 enqueues from 20 connections at once all persist, with positions 1..100."""

    async def twenty_at_a_time(batch: int) -> list[int]:
        return [
            (await enqueue(pool, alice, conversation_id))["queue_position"] for _ in range(batch)
        ]

    results = await asyncio.gather(*(twenty_at_a_time(5) for _ in range(20)))
    returned = sorted(p for batch in results for p in batch)
    assert returned == list(range(1, 101))
    assert len((await jobs.list_jobs(pool, conversation_id, actor=alice))["jobs"]) == 100
    assert_permutation_in_claim_order(await queue_snapshot(pool))
    await pool.close()


async def test_five_jobs_submitted_at_once_are_processed_in_order(
    pool: db.Pool, database_url: str, alice: Actor, conversation_id: str
) -> None:
    """R1.5, R1.2, R1.3: five simultaneous jobs are all queued, then taken in queue order."""
    created = await asyncio.gather(*(enqueue(pool, alice, conversation_id) for _ in range(5)))
    by_position = [j["job_id"] for j in sorted(created, key=lambda j: j["queue_position"])]
    session, worker_id = await worker_session(database_url)
    taken = []
    while (claim := await jobs.lock_and_claim(session, worker_id)) is not None:
        taken.append(str(claim.job_id))
        assert await jobs.complete(session, claim, PNG, release_device=claim.gpu_lock)
    assert taken == by_position
    await session.close()


async def test_positions_update_when_a_job_completes_or_a_new_one_arrives(
    pool: db.Pool, database_url: str, alice: Actor, conversation_id: str
) -> None:
    """R4.1, R4.2: completing the head moves everyone up; a higher-priority job goes first."""
    a, b, c = [await enqueue(pool, alice, conversation_id) for _ in range(3)]
    session, worker_id = await worker_session(database_url)
    claim = await jobs.lock_and_claim(session, worker_id)
    assert claim is not None and str(claim.job_id) == a["job_id"]
    await jobs.complete(session, claim, PNG, release_device=claim.gpu_lock)
    got = {
        j["job_id"]: j["queue_position"]
        for j in (await jobs.list_jobs(pool, conversation_id, actor=alice))["jobs"]
    }
    assert (got[b["job_id"]], got[c["job_id"]]) == (1, 2)
    admin = Actor(user_id=alice.user_id, is_admin=True)
    urgent = await jobs.enqueue(
        pool, conversation_id, request(priority=5), actor=admin, max_queued=100
    )
    assert urgent["queue_position"] == 1
    got = {
        j["job_id"]: j["queue_position"]
        for j in (await jobs.list_jobs(pool, conversation_id, actor=alice))["jobs"]
    }
    assert (got[b["job_id"]], got[c["job_id"]]) == (2, 3)
    await session.close()


async def test_a_reload_reads_positions_from_the_database(
    pool: db.Pool, database_url: str, alice: Actor, conversation_id: str
) -> None:
    """R3.4, R4.4: the conversation read after a reload shows the live position, not a stale one."""
    first = await enqueue(pool, alice, conversation_id)
    second = await enqueue(pool, alice, conversation_id)
    session, worker_id = await worker_session(database_url)
    claim = await jobs.lock_and_claim(session, worker_id)
    assert claim is not None and str(claim.job_id) == first["job_id"]
    conversation = await get_conversation(pool, conversation_id, actor=alice)
    meta = {m["extra_metadata"]["job_id"]: m["extra_metadata"] for m in conversation["messages"]}
    assert meta[second["job_id"]]["queue_position"] == 1
    assert meta[first["job_id"]]["queue_position"] == 0
    await session.close()


async def test_positions_stay_a_permutation_under_load(database_url: str, alice: Actor) -> None:
    """R4.5, R9.3: enqueues, claims, completes and cancels from 8+ connections; every snapshot
    of positions is exactly 1..N in claim order, and no statement hits the lock timeout."""
    url = db.with_lock_timeout(database_url, "500ms")  # what GPUQUEUE_LOCK_TIMEOUT=500ms gives
    pool = db.make_pool(url, "storm", min_size=8, max_size=16)
    await pool.open()
    conversations = [str((await create_conversation(pool, actor=alice))["id"]) for _ in range(4)]
    admin = Actor(user_id=alice.user_id, is_admin=True)
    stop = asyncio.Event()
    snapshots = 0
    rng = random.Random(7)

    async def producer(i: int) -> None:
        for n in range(60):
            prio = rng.choice([0, 0, 0, 1, -1])
            job = await jobs.enqueue(
                pool, conversations[i % 4], request(prio), actor=admin, max_queued=10_000
            )
            if n % 7 == 3:
                # A consumer may have finished it first: then the cancel is refused.
                with contextlib.suppress(IllegalTransition):
                    await jobs.cancel(pool, job["job_id"], actor=admin)

    async def consumer(device: str) -> None:
        session, worker_id = await worker_session(url, device)
        async with session:
            while not stop.is_set():
                claim = await jobs.lock_and_claim(session, worker_id)
                if claim is None:
                    await asyncio.sleep(0.005)
                    continue
                await jobs.complete(session, claim, PNG, release_device=claim.gpu_lock)

    async def observer() -> None:
        nonlocal snapshots
        while not stop.is_set():
            assert_permutation_in_claim_order(await queue_snapshot(pool))
            snapshots += 1

    assert await queries.fetch_value(pool, "show_lock_timeout") == "500ms"
    workers = [asyncio.create_task(consumer(f"gpu{i}")) for i in range(3)]
    watchers = [asyncio.create_task(observer()) for _ in range(2)]
    await asyncio.gather(*(producer(i) for i in range(4)))
    stop.set()
    await asyncio.gather(*workers, *watchers)
    assert snapshots > 10
    assert_permutation_in_claim_order(await queue_snapshot(pool))
    await pool.close()
