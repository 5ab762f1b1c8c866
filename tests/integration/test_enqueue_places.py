"""Submits place jobs from the ordered log (issue 14): the web enqueue counts no queue, yet the
position it answers, the one its queued event stores and the one its message holds are the
rank the job took at that event's seq, with many users submitting at once through two web
processes while jobs are claimed, retried and moved; and every later read agrees with a count."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from queueing import db
from tests import queries
from tests.integration.web_support import (
    HandWorker,
    User,
    enqueue,
    make_user,
    new_conversation,
    running_app,
)

USERS = 6
SUBMITS = 10


def replayed_ranks(log: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(seq, stored position, rank at that seq) of every queued event, replaying the log."""
    queued: dict[Any, tuple[str, tuple[int, float, int]]] = {}
    out = []
    for e in log:
        queued.pop(e["job_id"], None)
        if e["status"] != "queued":
            continue
        key = (-e["priority"], e["start_tag"], e["queue_seq"])
        queued[e["job_id"]] = (e["model"], key)
        rank = 1 + sum(1 for m, k in queued.values() if m == e["model"] and k < key)
        out.append((e["seq"], e["queue_position"], rank))
    return out


async def test_concurrent_submits_through_two_web_processes_get_the_place_they_took(
    pool: db.Pool, database_url: str
) -> None:
    async with running_app(database_url) as one, running_app(database_url) as two:
        users: list[User] = [await make_user(pool, f"u{i}") for i in range(USERS)]
        conversations = [await new_conversation(one, u) for u in users]
        worker = await HandWorker(database_url).start()
        answered: dict[str, int] = {}

        async def submit(i: int) -> None:
            rng = random.Random(i)
            for n in range(SUBMITS):
                client = (one, two)[(i + n) % 2]
                job = await enqueue(
                    client, users[i], conversations[i], priority=rng.choice([0, -1])
                )
                assert job["status"] == "queued"
                answered[job["job_id"]] = job["queue_position"]

        async def disturb() -> None:
            # Claims, completions and retries, interleaved with the submits.
            for round_ in range(12):
                claim = await _claim_some(worker)
                if claim is None:
                    await asyncio.sleep(0.01)
                elif round_ % 2:
                    await worker.fail(claim, "flaky", retryable=True)
                else:
                    await worker.complete(claim)

        await asyncio.gather(*(submit(i) for i in range(USERS)), disturb())
        await worker.close()

        log = [dict(r) for r in await queries.fetch_all(pool, "event_log_with_keys")]
        first_queued = {}
        for e in log:
            if e["status"] == "queued":
                first_queued.setdefault(str(e["job_id"]), e)
        # Every queued event's stored position is the rank the job had right after it.
        wrong = [r for r in replayed_ranks(log) if r[1] != r[2]]
        assert not wrong, wrong[:10]
        for job_id, position in answered.items():
            event = first_queued[job_id]
            assert event["queue_position"] == position, (job_id, event, position)
        # Messages of jobs still queued hold a position (written back, never left null).
        assert all(e["message_position"] is not None for e in log if e["status"] == "queued")

        # Moves to the front rotate keys (so the log above is replayed before them): each user
        # moves their last queued job, through either process.
        for i, (user, conversation_id) in enumerate(zip(users, conversations, strict=True)):
            client = (one, two)[i % 2]
            listed = await (
                await client.get(f"/api/conversations/{conversation_id}/jobs", headers=user.headers)
            ).json()
            last = [j for j in listed["jobs"] if j["status"] == "queued"][-1]
            moved = await client.post(
                f"/api/jobs/{last['job_id']}/move", json={"to": "front"}, headers=user.headers
            )
            assert moved.status == 200, await moved.text()
        # Both processes now list every queued job at the position a count gives.
        audit = {str(r["job_id"]): r["queue_position"] for r in await _audit(pool)}
        for client in (one, two):
            for user, conversation_id in zip(users, conversations, strict=True):
                await _until_listed(client, user, conversation_id, audit)


async def _claim_some(worker: HandWorker) -> Any:
    from queueing import jobs

    assert worker.conn is not None
    return await jobs.lock_and_claim(worker.conn, worker.worker_id)


async def _audit(pool: db.Pool) -> list[db.Row]:
    rows = await queries.fetch_all(pool, "queue_position_audit")
    assert all(r["queue_position"] == r["queue_rank"] for r in rows)
    return rows


async def _until_listed(
    client: Any, user: User, conversation_id: str, audit: dict[str, int]
) -> None:
    """The listing's positions equal the counted ones once the process has routed every event
    (it follows the log a moment behind the database)."""
    for _ in range(200):
        listed = await (
            await client.get(f"/api/conversations/{conversation_id}/jobs", headers=user.headers)
        ).json()
        got = {j["job_id"]: j["queue_position"] for j in listed["jobs"] if j["status"] == "queued"}
        if got == {k: v for k, v in audit.items() if k in got} and set(got) <= set(audit):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"listing {got} never matched the counted positions")
