"""The web's enqueue commits its job pending, with no event and no event lock, and a sequencer
queues every committed pending job in one transaction (issue 14): the events keep their
guarantees (each job's pending then queued event, seq rising in queue order within a batch), a
job another transaction holds is skipped rather than waited for under the lock, a pending job
whose web process died is queued by the sweep and reaches subscribers, and the per-user limit
and fair-share tags count pending jobs."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import psycopg
import pytest

from queueing import db
from queueing.sequencer import Sequencer
from tests import queries
from tests.integration.web_support import (
    frames_until,
    make_user,
    new_conversation,
    running_app,
    subscribe,
)


async def enqueue_pending(
    pool: db.Db, conversation_id: str, prompt: str = "a fox", max_queued: int = 100
) -> UUID:
    job: dict[str, Any] = await queries.fetch_value(
        pool,
        "enqueue_pending",
        {"conversation_id": conversation_id, "prompt": prompt, "max_queued": max_queued},
    )
    assert job["status"] == "pending" and job["event_seq"] is None, job
    return UUID(job["job_id"])


async def jobs_of(pool: db.Db, conversation_id: str) -> list[dict[str, Any]]:
    """The conversation's jobs in queue order, each job's events as (status, seq) in seq order."""
    rows = await queries.fetch_all(pool, "sequenced_jobs", {"conversation_id": conversation_id})
    for row in rows:
        row["events"] = [(e.split(":")[0], int(e.split(":")[1])) for e in row["events"]]
    return rows


async def test_pending_jobs_have_no_events_until_one_sequencing_queues_them_all(
    pool: db.Pool, conversation_id: str
) -> None:
    ids = [await enqueue_pending(pool, conversation_id, f"p{i}") for i in range(5)]
    pending = await jobs_of(pool, conversation_id)
    assert [(j["status"], j["message_status"], j["events"]) for j in pending] == [
        ("pending", "pending", [])
    ] * 5
    sequenced = await Sequencer(pool).sequenced(ids[2])
    assert sequenced is not None and sequenced.job["status"] == "queued"
    after = await jobs_of(pool, conversation_id)
    assert [(j["status"], j["message_status"]) for j in after] == [("queued", "queued")] * 5
    assert len({j["queued_at"] for j in after}) == 1  # one transaction queued them all
    statuses = [status for j in after for status, _ in j["events"]]
    seqs = [seq for j in after for _, seq in j["events"]]
    assert statuses == ["pending", "queued"] * 5
    assert seqs == list(range(seqs[0], seqs[0] + 10))  # in queue order, nothing between
    assert sequenced.seq == after[2]["events"][1][1]


async def test_a_pending_job_held_by_another_transaction_is_skipped_then_queued(
    pool: db.Pool, conversation_id: str
) -> None:
    held_id = await enqueue_pending(pool, conversation_id, "held")
    free_id = await enqueue_pending(pool, conversation_id, "free")
    sequencer = Sequencer(pool)
    async with pool.connection() as holder, holder.transaction():
        await queries.fetch_all(holder, "job_row_lock", {"job_id": held_id})
        waiting = asyncio.create_task(sequencer.sequenced(held_id))
        done = await asyncio.wait_for(sequencer.sequenced(free_id), 5)
        assert done is not None and done.job["status"] == "queued"  # not stuck behind it
        states = {j["job_id"]: j["status"] for j in await jobs_of(pool, conversation_id)}
        assert states == {held_id: "pending", free_id: "queued"}
        assert not waiting.done()
    sequenced = await asyncio.wait_for(waiting, 5)
    assert sequenced is not None and sequenced.job["status"] == "queued"
    assert sequenced.seq is not None and done.seq is not None and sequenced.seq > done.seq


async def test_a_pending_job_left_by_a_dead_web_process_is_queued_and_sent_to_subscribers(
    pool: db.Pool, database_url: str
) -> None:
    async with running_app(database_url) as client:
        alice = await make_user(pool, "alice")
        conversation_id = await new_conversation(client, alice)
        ws = await client.ws_connect("/ws", headers=alice.headers)
        await subscribe(ws, conversation_id=conversation_id)
        job_id = await enqueue_pending(pool, conversation_id)
        frames = await frames_until(ws, lambda f: f.get("type") == "queued", wait_s=10)
        assert frames[-1]["job_id"] == str(job_id) and frames[-1]["queue_position"] == 1
        read = await client.get(f"/api/jobs/{job_id}", headers=alice.headers)
        body = await read.json()
        assert body["status"] == "queued" and body["queue_position"] == 1
        await ws.close()


async def test_a_job_canceled_while_pending_is_queued_then_canceled_like_any_other(
    pool: db.Pool, conversation_id: str
) -> None:
    job_id = await enqueue_pending(pool, conversation_id)
    await db.fetch_one(pool, "job_cancel", {"job_id": job_id, "owner": None})
    sequenced = await Sequencer(pool).sequenced(job_id)
    assert sequenced is not None and sequenced.job["status"] == "canceled"
    [job] = await jobs_of(pool, conversation_id)
    assert [status for status, _ in job["events"]] == ["pending", "queued", "canceled"]
    assert sequenced.seq == job["events"][1][1]


async def test_deleting_a_conversation_with_pending_jobs_cancels_and_removes_them(
    pool: db.Pool, database_url: str
) -> None:
    async with running_app(database_url) as client:
        alice = await make_user(pool, "alice")
        conversation_id = await new_conversation(client, alice)
        for prompt in ("one", "two"):
            await enqueue_pending(pool, conversation_id, prompt)
        deleted = await client.delete(
            f"/api/conversations/{conversation_id}", headers=alice.headers
        )
        assert deleted.status == 204, await deleted.text()
        assert await jobs_of(pool, conversation_id) == []


async def test_the_queue_limit_and_fair_share_tags_count_pending_jobs(
    pool: db.Pool, conversation_id: str
) -> None:
    await enqueue_pending(pool, conversation_id, "one", max_queued=2)
    await enqueue_pending(pool, conversation_id, "two", max_queued=2)
    with pytest.raises(psycopg.DatabaseError) as refused:
        await enqueue_pending(pool, conversation_id, "three", max_queued=2)
    assert refused.value.sqlstate == "GQ429"
    first, second = await jobs_of(pool, conversation_id)
    assert second["start_tag"] == first["finish_tag"]  # the second starts after the first
