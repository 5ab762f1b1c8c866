"""Completions sent with the next claim (GpuSession.complete_and_claim): one round trip, one
transaction, so either all of it is committed or none of it, and the session goes on."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from gpu_worker.gpu_lock import GpuSession
from gpu_worker.png import encode_rgb
from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from queueing.config import BUILTIN_MODEL
from tests.integration.worker_support import (
    SUBMITTED,
    job,
    rows,
    seed,
    status_of,
    submit_many,
)
from tests.queries import TEST_QUERIES, fetch_all, fetch_value

PNG = encode_rgb(8, 8, [bytes(range(24))] * 8)
# How a plan reads the jobs table (auto_explain's text format).
JOBS_SCAN = re.compile(
    r"(?:Seq Scan|(?:Index|Index Only|Bitmap Heap) Scan(?: using \w+)?) on jobs\b"
)


@pytest.fixture
async def session(database_url: str) -> AsyncIterator[GpuSession]:
    opened = await GpuSession.open(
        database_url,
        host="box",
        device="cuda:0",
        backend="stub",
        model=BUILTIN_MODEL,
        deadline_s=5.0,
    )
    yield opened
    await opened.close()


async def test_a_batch_completes_and_the_next_jobs_are_claimed_in_one_commit(
    pool: db.Pool, conversation_id: str, alice: Actor, session: GpuSession
) -> None:
    first, second, third = await submit_many(pool, conversation_id, alice, 3)
    batch = await session.claim_batch(2)
    assert [str(c.job_id) for c in batch] == [first, second]
    handoff = await session.complete_and_claim([(c, PNG) for c in batch], 2)
    assert handoff.committed and handoff.stored == [True, True]
    assert [str(c.job_id) for c in handoff.claims] == [third]
    written = await fetch_all(pool, "job_writers")
    assert [(r["job_id"], r["status"]) for r in written] == [
        (first, "complete"),
        (second, "complete"),
        (third, "processing"),
    ]
    assert len({r["writer"] for r in written}) == 1  # one transaction
    for job_id in (first, second, third):  # each its own transition
        events = await fetch_all(pool, "job_events_of", {"job_id": job_id})
        assert events[-1]["status"] == ("processing" if job_id == third else "complete")
    assert await fetch_value(pool, "gpu_locks_held") == 1  # taken again, for the third job
    last = await session.complete_and_claim([(handoff.claims[0], PNG)], 2)
    assert last.stored == [True] and last.claims == []
    assert await fetch_value(pool, "gpu_locks_held") == 0  # nothing left: the GPU is free


QUEUE_READS = {  # the queue's order, a job by its id, the worker's own running jobs
    "Index Scan using jobs_queued_idx on jobs",
    "Index Scan using jobs_pkey on jobs",
    "Index Scan using jobs_processing_idx on jobs",
}
NO_OP = {"width": 64, "height": 64, "steps": 1, "seed": 0}


async def handoff_scans(session: GpuSession) -> set[str]:
    """How five hand-offs at batch 1, then five of ten compatible jobs, read the jobs table."""
    plans: list[str] = []
    session.conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    await session.conn.execute(TEST_QUERIES["explain_nested_statements"])
    [claim] = await session.claim_batch(1)
    for _ in range(5):
        [claim] = (await session.complete_and_claim([(claim, PNG)], 1)).claims
    batch = [claim]
    for _ in range(5):  # batches: their compatible members too
        batch = (await session.complete_and_claim([(c, PNG) for c in batch], 10)).claims
        assert len(batch) == 10
    scans = {m[0] for plan in plans for m in JOBS_SCAN.finditer(plan)}
    assert "Index Scan using jobs_queued_idx on jobs" in scans  # the claims' plans were seen
    return scans


async def waiting_on_a_lock(pool: db.Pool, session: GpuSession, what: str) -> db.Row:
    """The session's backend once it waits for a lock (its wait state), `what` naming it."""

    async def waiting() -> db.Row | None:
        [state] = await fetch_all(pool, "backend_waits", {"pid": session.backend_pid})
        return state if state["wait_event_type"] == "Lock" else None

    state = await eventually(waiting, what=f"the hand-off waiting for {what}")
    assert state is not None
    return state


async def test_claims_read_the_queue_through_its_order_and_jobs_by_id_only(
    pool: db.Pool, conversation_id: str, alice: Actor, session: GpuSession
) -> None:
    """A claim or a hand-off reads jobs only through the queue's order and by id, at batch 1 and
    for a batch's compatible members: planned generically (plpgsql), the probe for a runnable
    job scanned the heap from its start (its cost rising with every finished job ahead of the
    first queued one) and the batch's window read every queued job."""
    await seed(pool, alice, conversation_id, 500, "complete", NO_OP)
    await seed(pool, alice, conversation_id, 3000, "queued", NO_OP)
    async with pool.connection() as conn:
        await conn.execute(TEST_QUERIES["analyze_jobs"])
    assert await handoff_scans(session) <= QUEUE_READS


async def test_a_session_that_planned_on_a_small_queue_still_reads_only_its_head(
    pool: db.Pool, conversation_id: str, alice: Actor, session: GpuSession
) -> None:
    """A session plans the hand-off once (generic plans), on the table as it is then, and keeps
    the plans until the table's statistics change. Planned on a near-empty queue (a fresh
    deployment, before autovacuum's first ANALYZE), the claim found its head by reading and
    sorting every queued job of the model, and the hand-off joined its rows to a scan of the
    whole table: per job, a cost that rose with the queue for as long as the worker lived
    (bench peer: one job per claim at 0.29x PgQueuer's dequeuer)."""
    first, second = await submit_many(pool, conversation_id, alice, 2)
    [claim] = await session.claim_batch(1)
    [claim] = (await session.complete_and_claim([(claim, PNG)], 10)).claims
    assert (await session.complete_and_claim([(claim, PNG)], 10)).claims == []
    assert [await status_of(pool, j) for j in (first, second)] == ["complete", "complete"]
    await seed(pool, alice, conversation_id, 500, "complete", NO_OP)
    await seed(pool, alice, conversation_id, 3000, "queued", NO_OP)
    assert await handoff_scans(session) <= QUEUE_READS


async def test_a_hand_off_waits_for_a_message_row_without_holding_the_event_lock(
    pool: db.Pool, conversation_id: str, alice: Actor, session: GpuSession
) -> None:
    """Every message row a hand-off writes, its completion's and its claim's, is locked before
    the event lock: a merge that holds the next job's message keeps the hand-off waiting, while
    every other event writer goes on."""
    first, second = await submit_many(pool, conversation_id, alice, 2)
    [claim] = await session.claim_batch(1)
    async with pool.connection() as holder, holder.transaction():
        await holder.execute(TEST_QUERIES["message_row_lock"], {"job_id": second})
        hand_off = asyncio.create_task(session.complete_and_claim([(claim, PNG)], 1))
        state = await waiting_on_a_lock(pool, session, "the message row")
        assert not state["holds_event_lock"]
    handoff = await hand_off
    assert handoff.stored == [True] and [str(c.job_id) for c in handoff.claims] == [second]
    assert [await status_of(pool, j) for j in (first, second)] == ["complete", "processing"]


@pytest.mark.parametrize("change", ["progress report", "cancel request"])
async def test_a_batch_member_changed_while_its_hand_off_waits_is_completed(
    pool: db.Pool, conversation_id: str, alice: Actor, session: GpuSession, change: str
) -> None:
    """A member's row may be changed by a transaction that commits while the batch's hand-off
    waits for it: the job's last progress report (its own connection) or its user's cancel
    request. The hand-off then completes the member: with the members joined as a UNION ALL
    (the plan a session made on a queue of realistic size), PostgreSQL's re-check of the row's
    new version found no member, and the job stayed processing under a live worker, its image
    dropped as a stale claim's."""
    await submit_many(pool, conversation_id, alice, 5)
    await seed(pool, alice, conversation_id, 500, "complete", SUBMITTED)
    await seed(pool, alice, conversation_id, 3000, "queued", SUBMITTED)
    async with pool.connection() as conn:
        await conn.execute(TEST_QUERIES["analyze_jobs"])
    claims = await session.claim_batch(4)
    assert len(claims) == 4
    async with pool.connection() as other, other.transaction():
        if change == "progress report":
            assert await jobs.report_progress(other, claims[-1], 4, 4) is False
        else:
            await jobs.cancel(other, str(claims[-1].job_id), actor=alice)
        hand_off = asyncio.create_task(session.complete_and_claim([(c, PNG) for c in claims], 1))
        await waiting_on_a_lock(pool, session, f"the {change}'s row")
    handoff = await hand_off
    assert handoff.stored == [True] * 4 and len(handoff.claims) == 1
    assert [await status_of(pool, str(c.job_id)) for c in claims] == ["complete"] * 4


async def test_a_refused_completion_commits_nothing_and_the_session_goes_on(
    pool: db.Pool, conversation_id: str, alice: Actor, session: GpuSession
) -> None:
    first, second, third = await submit_many(pool, conversation_id, alice, 3)
    good, bad = await session.claim_batch(2)
    # Not a PNG: the image table's CHECK refuses the second completion.
    handoff = await session.complete_and_claim([(good, PNG), (bad, b"GIF89a")], 2)
    assert not handoff.committed and handoff.claims == []
    assert [await status_of(pool, j) for j in (first, second, third)] == [
        "processing",
        "processing",
        "queued",
    ]
    assert await session.complete(good, PNG, release=False)  # the session is idle again
    assert await session.complete(bad, PNG)
    assert [await status_of(pool, j) for j in (first, second)] == ["complete", "complete"]
    assert await fetch_value(pool, "gpu_locks_held") == 0


async def test_a_refused_claim_commits_nothing_and_the_session_goes_on(
    pool: db.Pool, conversation_id: str, alice: Actor, session: GpuSession
) -> None:
    first, second = await submit_many(pool, conversation_id, alice, 2)
    claim = await session.claim()
    assert claim is not None
    handoff = await session.complete_and_claim([(claim, PNG)], 0)  # a batch of 0: refused
    assert not handoff.committed and handoff.claims == []
    assert [await status_of(pool, j) for j in (first, second)] == ["processing", "queued"]
    assert await session.complete(claim, PNG)
    again = await session.claim()
    assert again is not None and str(again.job_id) == second


async def test_a_batch_completes_in_one_statement_each_member_in_its_own_transition(
    pool: db.Pool, database_url: str, conversation_id: str, alice: Actor, session: GpuSession
) -> None:
    """Set-based completion (contract: Batching, "each member completes in its own
    transition"): one statement and one transaction complete the members, and each still gets
    its own complete event, its own NOTIFY, its image, its message metadata and its final
    state; a member canceled meanwhile (its claim ended) is not completed, and keeps its state."""
    first, canceled, third = await submit_many(pool, conversation_id, alice, 3)
    batch = await session.claim_batch(3)
    assert [str(c.job_id) for c in batch] == [first, canceled, third]
    await jobs.cancel(pool, canceled, actor=alice)
    assert await session.finish_canceled(batch[1], release=False)  # as the worker ends it
    listen = await db.connect(database_url, "test-listen")
    try:
        await listen.execute("LISTEN gq_event")
        stored = await session.complete_batch([(c, PNG) for c in batch])
        assert stored == [True, False, True]
        # NOTIFYs of one listener arrive in commit order: the marker comes after the batch's.
        await fetch_all(pool, "notify_event", {"payload": "marker"})
        heard = []
        async for notify in listen.notifies(timeout=10.0):
            if notify.payload == "marker":
                break
            heard.append(notify.payload)
    finally:
        await listen.close()
    assert sorted(heard) == sorted([first, third])  # one each, none for the canceled one
    written = {r["job_id"]: r for r in await fetch_all(pool, "job_writers")}
    assert written[first]["writer"] == written[third]["writer"]  # one transaction
    assert written[canceled]["status"] == "canceled"
    seqs = []
    for job_id, status in ((first, "complete"), (canceled, "canceled"), (third, "complete")):
        events = await fetch_all(pool, "job_events_of", {"job_id": job_id})
        assert [e["status"] for e in events][-2:] == ["processing", status]
        assert [e["status"] for e in events].count("complete") == (status == "complete")
        seqs.append(events[-1]["seq"])
        shown = await job(pool, job_id)
        assert shown["status"] == status
        metadata = await rows(
            pool,
            "SELECT m.extra_metadata FROM messages AS m JOIN jobs AS j ON j.message_id = m.id"
            " WHERE j.id = %(id)s",
            {"id": job_id},
        )
        assert metadata[0]["extra_metadata"]["status"] == status
        has_image = await rows(
            pool, "SELECT 1 FROM job_images WHERE job_id = %(id)s", {"id": job_id}
        )
        assert bool(has_image) == (status == "complete")
    assert seqs[0] < seqs[2]  # each its own event, in the batch's order
    assert await fetch_value(pool, "gpu_locks_held") == 0  # the last end released the GPU


async def test_workers_are_woken_only_by_jobs_of_their_model_queued_and_by_a_gpu_left_free(
    pool: db.Pool, database_url: str, conversation_id: str, alice: Actor, session: GpuSession
) -> None:
    """The workers' wake-ups (gq_queued, gq_gpu): each enqueue names its model, and a job's end
    that leaves the GPU free names the GPU; claims and a hand-off that keeps the GPU wake
    nobody (they used to wake every worker of the fleet through gq_event)."""
    listen = await db.connect(database_url, "test-listen")
    try:
        for channel in ("gq_queued", "gq_gpu", "gq_event"):
            await listen.execute(f"LISTEN {channel}")
        await submit_many(pool, conversation_id, alice, 2)
        claim = await session.claim()
        assert claim is not None
        handoff = await session.complete_and_claim([(claim, PNG)], 1)  # the GPU stays ours
        assert await session.complete(handoff.claims[0], PNG)  # nothing next: the GPU is free
        await fetch_all(pool, "notify_event", {"payload": "marker"})
        heard = []
        async for notify in listen.notifies(timeout=10.0):
            if notify.payload == "marker":
                break
            if notify.channel != "gq_event":
                heard.append((notify.channel, notify.payload))
    finally:
        await listen.close()
    assert heard == [
        ("gq_queued", BUILTIN_MODEL),
        ("gq_queued", BUILTIN_MODEL),
        ("gq_gpu", session.gpu_lock),
    ]
