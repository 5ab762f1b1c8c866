"""A web process's enqueues in batches (issue 14): one statement and one transaction queue
every enqueue in flight (gq_enqueue_batch), each refused item alone writing nothing; users'
locks are taken in one order up front, so concurrent batches and deletes never deadlock; the
events keep their guarantees (each job's pending then queued event, seq rising in queue order
within a batch); a lone enqueue is one gq_enqueue. A job a web process of the release before
committed pending (gq_enqueue's 'sequence' mode on its own, `enqueue_pending` here) is queued
by the next batch or the sweep,
never waited for under the lock while another transaction holds it, and reaches subscribers;
the per-user limit and fair-share tags count pending jobs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.types.json import Jsonb

from queueing import db, jobs
from queueing.actors import Actor
from queueing.conversations import create_conversation
from queueing.errors import NotFound, QueueFull, UnknownModel
from queueing.jobs import get_job
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


def item(conversation_id: str, prompt: str = "a fox", **overrides: Any) -> dict[str, Any]:
    """One enqueue's arguments, as queueing.jobs.enqueue hands them to the sequencer."""
    return {
        "conversation_id": conversation_id,
        "owner": None,
        "model": "tiny",
        "default_model": "tiny",
        "cost_intercept_s": 1.0,
        "cost_slope_s": 0.0,
        "prompt": prompt,
        "params": {},
        "priority": 0,
        "max_attempts": 3,
        "timeout_s": 600,
        "max_queued": 100,
        **overrides,
    }


async def jobs_of(pool: db.Db, conversation_id: str) -> list[dict[str, Any]]:
    """The conversation's jobs in queue order, each job's events as (status, seq) in seq order."""
    rows = await queries.fetch_all(pool, "sequenced_jobs", {"conversation_id": conversation_id})
    for row in rows:
        row["events"] = [(e.split(":")[0], int(e.split(":")[1])) for e in row["events"]]
    return rows


async def test_a_lone_enqueue_is_queued_in_its_own_transaction(
    pool: db.Pool, conversation_id: str
) -> None:
    job = await Sequencer(pool).enqueue(item(conversation_id))
    [row] = await jobs_of(pool, conversation_id)
    assert job["status"] == "queued" and job["job_id"] == str(row["job_id"])
    assert [status for status, _ in row["events"]] == ["pending", "queued"]
    assert job["event_seq"] == row["events"][1][1]  # type: ignore[typeddict-item]
    with pytest.raises(NotFound):
        await Sequencer(pool).enqueue(item(str(uuid4())))


EVENTS_READ = re.compile(
    r"(?:Seq Scan|(?:Index|Index Only|Bitmap Heap) Scan(?: using \w+)?) on job_events\b"
)


@pytest.fixture
async def explained(database_url: str) -> AsyncIterator[tuple[db.Pool, list[str]]]:
    """A sequencer's pool of one connection whose every plan, nested ones too, is kept."""
    plans: list[str] = []

    async def configure(conn: db.Connection) -> None:
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        await conn.execute(queries.TEST_QUERIES["explain_nested_statements"])

    async with db.make_pool(
        database_url, "gpuqueue-test", max_size=1, configure=configure
    ) as explained_pool:
        yield explained_pool, plans


async def test_an_enqueue_answers_with_the_events_it_wrote_without_reading_them_back(
    pool: db.Pool, conversation_id: str, alice: Actor, explained: tuple[db.Pool, list[str]]
) -> None:
    """A lone enqueue and a batch answer each job's transitions and queued seq from what they
    wrote: read back from job_events, on a plan made while the table was small (a session's
    generic plan) the answer cost a scan of every event and slowed as the log grew."""
    explained_pool, plans = explained
    sequencer = Sequencer(explained_pool)
    lone = await sequencer.enqueue(item(conversation_id, "lone"))
    batch = await asyncio.gather(
        *(sequencer.enqueue(item(conversation_id, f"p{i}")) for i in range(3))
    )
    assert any("gq_enqueue_batch" in plan for plan in plans)  # the plans were seen
    assert [m[0] for plan in plans for m in EVENTS_READ.finditer(plan)] == []
    for answer in [lone, *batch]:
        stored = await get_job(pool, answer["job_id"], actor=alice)
        assert answer["transitions"] == stored["transitions"]
        assert [t["status"] for t in answer["transitions"]] == ["pending", "queued"]
    after = await jobs_of(pool, conversation_id)
    assert [a["event_seq"] for a in [lone, *batch]] == [j["events"][1][1] for j in after]  # type: ignore[typeddict-item]


async def test_concurrent_enqueues_go_in_one_transaction_each_round(
    pool: db.Pool, conversation_id: str
) -> None:
    sequencer = Sequencer(pool)
    answers = await asyncio.gather(
        *(sequencer.enqueue(item(conversation_id, f"p{i}")) for i in range(6))
    )
    after = await jobs_of(pool, conversation_id)
    assert [(j["status"], j["message_status"]) for j in after] == [("queued", "queued")] * 6
    assert (
        len({j["queued_at"] for j in after}) == 1
    )  # all six came before the round: one transaction
    statuses = [status for j in after for status, _ in j["events"]]
    seqs = [seq for j in after for _, seq in j["events"]]
    assert statuses == ["pending", "queued"] * 6
    assert seqs == list(range(seqs[0], seqs[0] + 12))  # in queue order, nothing between
    assert [a["job_id"] for a in answers] == [str(j["job_id"]) for j in after]
    assert [a["event_seq"] for a in answers] == [j["events"][1][1] for j in after]  # type: ignore[typeddict-item]
    assert all(a["status"] == "queued" for a in answers)


async def test_a_refused_item_writes_nothing_and_fails_alone(
    pool: db.Pool, conversation_id: str
) -> None:
    await enqueue_pending(pool, conversation_id, "first")  # the limit of 2 below counts it
    rows = await db.fetch_all(
        pool,
        "jobs_enqueue_batch",
        {
            "items": Jsonb(
                [
                    item(conversation_id, "ok", max_queued=2),
                    item(str(uuid4()), "no such conversation"),
                    item(conversation_id, "no such model", model="huge"),
                    item(conversation_id, "over the limit", max_queued=2),
                    item(conversation_id, "too long" * 10_000),
                    item(conversation_id, "ok too", max_queued=4),
                ]
            )
        },
    )
    by_item = {row["item"]: row for row in rows}
    assert sorted(by_item) == [1, 2, 3, 4, 5, 6]
    assert [by_item[n]["error_code"] for n in range(1, 7)] == [
        None, "GQ404", "GQ422", "GQ429", "23514", None
    ]  # fmt: skip
    jobs = await jobs_of(pool, conversation_id)
    assert [j["status"] for j in jobs] == ["queued"] * 3  # the old pending one, and both oks
    assert await queries.fetch_value(
        pool, "messages_in", {"conversation_id": conversation_id}
    ) == len(jobs)


async def test_batches_of_overlapping_users_and_a_racing_delete_never_deadlock(
    pool: db.Pool,
) -> None:
    people = [await make_user(pool, f"u{i}") for i in range(4)]
    convs = [str((await create_conversation(pool, actor=p.actor, title="t"))["id"]) for p in people]
    doomed = convs[0]
    seen: list[str | None] = []
    midway = asyncio.Event()

    async def batches(order: list[str]) -> None:
        for round_ in range(15):
            async with pool.connection() as conn:
                rows = await db.fetch_all(
                    conn,
                    "jobs_enqueue_batch",
                    {"items": Jsonb([item(c, f"r{round_}") for c in order for _ in range(2)])},
                )
            seen.extend(row["error_code"] for row in rows)
            if len(seen) >= 40:
                midway.set()

    async def delete_midway() -> None:
        await midway.wait()
        async with pool.connection() as conn:
            await db.fetch_all(
                conn, "conversation_cancel_jobs", {"conversation_id": doomed, "owner": None}
            )
            assert await db.fetch_value(
                conn, "conversation_delete", {"conversation_id": doomed, "owner": None}
            )

    async with asyncio.timeout(60):
        await asyncio.gather(batches(convs), batches(convs[::-1]), delete_midway())
    # No 40P01 (deadlock detected) anywhere: only the deleted conversation's items failed.
    assert set(seen) <= {None, "GQ404", "23503"}, set(seen)
    assert "GQ404" in seen or "23503" in seen
    assert await jobs_of(pool, doomed) == []
    for conv in convs[1:]:
        assert [j["status"] for j in await jobs_of(pool, conv)] == ["queued"] * 60
    assert await queries.fetch_value(pool, "pending_count") == 0


async def test_the_sequencer_answers_each_refusal_as_its_error(
    pool: db.Pool, conversation_id: str
) -> None:
    sequencer = Sequencer(pool)
    ok, missing, unknown, full = await asyncio.gather(
        sequencer.enqueue(item(conversation_id, "one", max_queued=1)),
        sequencer.enqueue(item(str(uuid4()))),
        sequencer.enqueue(item(conversation_id, model="huge")),
        sequencer.enqueue(item(conversation_id, "two", max_queued=1)),
        return_exceptions=True,
    )
    assert isinstance(ok, dict) and ok["status"] == "queued"
    assert isinstance(missing, NotFound)
    assert isinstance(unknown, UnknownModel) and "tiny" in str(unknown)
    assert isinstance(full, QueueFull)


async def test_a_batch_queues_the_pending_jobs_an_earlier_release_left(
    pool: db.Pool, conversation_id: str
) -> None:
    for i in range(3):
        await enqueue_pending(pool, conversation_id, f"old{i}")
    pending = await jobs_of(pool, conversation_id)
    assert [(j["status"], j["message_status"], j["events"]) for j in pending] == [
        ("pending", "pending", [])
    ] * 3
    sequencer = Sequencer(pool)
    await asyncio.gather(*(sequencer.enqueue(item(conversation_id, f"new{i}")) for i in range(2)))
    after = await jobs_of(pool, conversation_id)
    assert [(j["status"], j["message_status"]) for j in after] == [("queued", "queued")] * 5
    seqs = [seq for j in after for _, seq in j["events"]]
    assert seqs == list(range(seqs[0], seqs[0] + 10))


async def test_a_pending_job_held_by_another_transaction_is_skipped_then_queued(
    pool: db.Pool, conversation_id: str
) -> None:
    held_id = await enqueue_pending(pool, conversation_id, "held")
    sequencer = Sequencer(pool)
    async with pool.connection() as holder, holder.transaction():
        await queries.fetch_all(holder, "job_row_lock", {"job_id": held_id})
        async with asyncio.timeout(5):
            done = await asyncio.gather(
                *(sequencer.enqueue(item(conversation_id, f"free{i}")) for i in range(2))
            )
        assert [d["status"] for d in done] == ["queued"] * 2
        [held, *_] = await jobs_of(pool, conversation_id)
        assert held["status"] == "pending"
    async with asyncio.timeout(5):
        later = await asyncio.gather(
            *(sequencer.enqueue(item(conversation_id, f"later{i}")) for i in range(2))
        )
    held, free, _, _, _ = await jobs_of(pool, conversation_id)
    assert held["status"] == "queued"
    assert held["events"][1][1] > free["events"][1][1]  # queued after, by the later batch
    assert held["events"][1][1] < later[0]["event_seq"]  # type: ignore[typeddict-item]


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
    [job] = await jobs_of(pool, conversation_id)
    assert job["status"] == "canceled"
    assert [status for status, _ in job["events"]] == ["pending", "queued", "canceled"]


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


def id_millis(value: str) -> int:
    """The Unix milliseconds a UUIDv7 starts with; fails for any other kind of id."""
    uuid = UUID(value)
    assert uuid.version == 7, f"{value} is a version {uuid.version} UUID, not a time-ordered one"
    return uuid.int >> 80


async def test_every_enqueue_path_gives_its_job_and_message_time_ordered_ids(
    pool: db.Pool, conversation_id: str, alice: Actor
) -> None:
    """Migration 017: a key that rises with time lands at the right edge of its index, not on a
    random leaf (whose first write after a checkpoint puts the whole page in the WAL). A lone
    enqueue, a batch and the counted path (queueing.jobs.enqueue without a web process) all
    draw gq_new_id(): each id is a UUIDv7 of the moment its job was written, in order."""
    sequencer = Sequencer(pool)
    before = await queries.fetch_value(pool, "clock_ms")
    lone = await sequencer.enqueue(item(conversation_id, "lone"))
    batch = await asyncio.gather(
        *(sequencer.enqueue(item(conversation_id, f"p{i}")) for i in range(4))
    )
    counted = await jobs.enqueue(
        pool,
        conversation_id,
        jobs.JobRequest(prompt="counted", params={}),
        actor=alice,
        max_queued=100,
    )
    after = await queries.fetch_value(pool, "clock_ms")
    made = [lone, *batch, counted]
    stamps = [(id_millis(j["job_id"]), id_millis(j["message_id"])) for j in made]
    assert all(before <= ms <= after for pair in stamps for ms in pair), (before, stamps, after)
    job_ms = [job for job, _ in stamps]
    assert job_ms[0] <= min(job_ms[1:-1]) and max(job_ms[1:-1]) <= job_ms[-1], stamps


async def test_an_enqueue_plans_its_lookups_once_however_one_user_crowds_the_queue(
    pool: db.Pool, conversation_id: str, explained: tuple[db.Pool, list[str]]
) -> None:
    """With one user holding most of the queue, PostgreSQL kept custom plans for gq_enqueue's
    lookups (a generic plan's estimate, averaged over the users, looked dearer), so every
    enqueue planned them again: 0.78x the rate of an empty queue at 100,000 queued (bench
    scaling). gq_enqueue's plans are made once a session now, and never scan the jobs (a
    generic plan for the average user, who looks like the crowd, would): they show
    parameters, not one call's values."""
    crowd = await make_user(pool, "crowd")
    crowded = await create_conversation(pool, actor=crowd.actor, title="crowd")
    async with db.connection(pool) as conn:
        await conn.execute(
            queries.TEST_QUERIES["queue_crowd"],
            {"n": 20_000, "conversation_id": crowded["id"], "user_id": crowd.actor.user_id},
        )
        await conn.execute(queries.TEST_QUERIES["analyze_jobs"])
    explained_pool, plans = explained
    sequencer = Sequencer(explained_pool)
    for i in range(8):  # past the five custom plans a session's plan cache starts with
        plans.clear()
        await sequencer.enqueue(item(conversation_id, f"p{i}"))
    [count] = [plan for plan in plans if "count(*) FROM jobs WHERE user_id = v_user_id" in plan]
    assert re.search(r"\(user_id = \$\d+\)", count), count  # a parameter: the session's plan
    assert [plan for plan in plans if "Seq Scan on jobs" in plan] == []
