"""No user can stop the queue through a message's metadata (issue 10, item 3; contract: Input
limits): a PATCH stays within 192 KiB merged, 2,000 keys and 20 levels, or is refused with
nothing changed; and a job's own transitions never fail because of its message's metadata."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from psycopg.types.json import Jsonb

from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from queueing.conversations import get_conversation, merge_metadata
from queueing.errors import TooLarge
from queueing.limits import METADATA_BYTES as METADATA_MAX_BYTES
from tests.helpers import worker_session
from tests.integration.web_support import (
    HandWorker,
    enqueue,
    make_user,
    new_conversation,
    running_app,
)

Client = TestClient[web.Request, web.Application]
# The error that makes a row's metadata grow most: 4,000 characters, each 6 bytes as JSON text.
WORST_ERROR = "\x01" * 4000


def compact_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    async with running_app(database_url) as c:
        yield c


async def stored_metadata(pool: db.Pool, message_id: str) -> Any:
    rows = await pool_rows(pool, "SELECT extra_metadata FROM messages WHERE id = %s", message_id)
    return rows[0]["extra_metadata"]


async def pool_rows(pool: db.Pool, query: str, *args: Any) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cur = await conn.execute(query.encode(), args)
        return await cur.fetchall() if cur.description else []


async def test_patches_beyond_the_limits_are_refused_and_change_nothing(
    client: Client, pool: db.Pool
) -> None:
    """2,001 keys and 21 levels are 422, a merged object one byte over 192 KiB is 413; the
    limits themselves pass; a refused PATCH leaves the message exactly as it was."""
    user = await make_user(pool, "filler")
    job = await enqueue(client, user, await new_conversation(client, user))
    path = f"/api/messages/{job['message_id']}/metadata"

    async def patch(body: Any) -> tuple[int, Any]:
        response = await client.patch(path, json=body, headers=user.headers)
        return response.status, await response.json()

    def nested(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(levels - 1):
            value = {"d": value}
        return value

    keys_2000 = {"k": {f"k{i}": i for i in range(1999)}}
    assert (await patch(keys_2000))[0] == 200
    assert (await patch(nested(20)))[0] == 200
    before = await stored_metadata(pool, job["message_id"])
    status, body = await patch({"k": {f"k{i}": i for i in range(2000)}})
    assert (status, body["error"]["code"]) == (422, "metadata_too_many_keys"), body
    assert "2000 keys" in body["error"]["message"]
    status, body = await patch(nested(21))
    assert (status, body["error"]["code"]) == (422, "metadata_too_deep"), body
    assert await stored_metadata(pool, job["message_id"]) == before

    for i in range(3):  # bodies stay under 64 KiB; the merged object grows to the limit
        assert (await patch({f"fill{i}": "f" * 55_000}))[0] == 200
    current = await stored_metadata(pool, job["message_id"])
    pad = METADATA_MAX_BYTES - compact_size(current) - len(',"pad":""')
    status, body = await patch({"pad": "p" * pad})
    assert status == 200, body
    full = await stored_metadata(pool, job["message_id"])
    assert compact_size(full) == METADATA_MAX_BYTES == 196_608
    status, body = await patch({"pad": "p" * (pad + 1)})
    assert (status, body["error"]["code"]) == (413, "metadata_too_large"), body
    assert "196609 bytes" in body["error"]["message"], body
    assert await stored_metadata(pool, job["message_id"]) == full
    assert (await patch({"pad": "shorter"}))[0] == 200  # a patch that shrinks it is fine


async def fill_to_the_limit(pool: db.Pool, alice: Actor, message_id: str) -> int:
    """Merge `[0,0,…]` (the most jsonb bytes per byte of text: 6) and a pad, so the metadata is
    exactly 192 KiB of compact JSON, and check one byte more is refused; returns the zeros."""
    base = compact_size({**await stored_metadata(pool, message_id), "z": [], "p": ""})
    zeros = (METADATA_MAX_BYTES - base) // 2 - 10
    pad = METADATA_MAX_BYTES - base - (2 * zeros - 1)
    await merge_metadata(pool, message_id, {"z": [0] * zeros, "p": "p" * pad}, actor=alice)
    assert compact_size(await stored_metadata(pool, message_id)) == METADATA_MAX_BYTES
    with pytest.raises(TooLarge):
        await merge_metadata(pool, message_id, {"p": "p" * (pad + 1)}, actor=alice)
    return zeros


async def claim_when_due(worker: HandWorker) -> jobs.Claim:
    """The next claim, once a retried job's backoff has passed."""
    conn = worker.conn
    assert conn is not None

    async def claim() -> jobs.Claim | None:
        return await jobs.lock_and_claim(conn, worker.worker_id)

    return await eventually(claim)


async def test_every_transition_runs_on_a_message_filled_to_the_limit(
    pool: db.Pool, database_url: str, alice: Actor, conversation_id: str, worker: HandWorker
) -> None:
    """Claim, retry with the longest error, requeue, complete, cancel (queued and running),
    a lost worker's requeue and a final error: each on a message filled to 192 KiB."""
    assert worker.conn is not None

    async def full_job() -> tuple[str, str, int]:
        job = await jobs.enqueue(
            pool, conversation_id, jobs.JobRequest("p", {}), actor=alice, max_queued=100
        )
        zeros = await fill_to_the_limit(pool, alice, job["message_id"])
        return job["job_id"], job["message_id"], zeros

    async def status_in_metadata(message_id: str, zeros: int) -> str:
        meta = await stored_metadata(pool, message_id)
        assert meta["z"] == [0] * zeros  # the user's content is untouched
        return str(meta["status"])

    job_id, message_id, zeros = await full_job()
    claim = await worker.claim()
    assert str(claim.job_id) == job_id
    assert await worker.fail(claim, WORST_ERROR, retryable=True) == "queued"
    meta = await stored_metadata(pool, message_id)
    assert meta["error"] == WORST_ERROR and meta["status"] == "queued"
    claim = await claim_when_due(worker)
    assert await jobs.requeue(worker.conn, claim, release_device=claim.gpu_lock) == "queued"
    await worker.complete(await worker.claim())
    assert await status_in_metadata(message_id, zeros) == "complete"

    job_id, message_id, zeros = await full_job()
    assert (await jobs.cancel(pool, job_id, actor=alice))["status"] == "canceled"
    assert await status_in_metadata(message_id, zeros) == "canceled"

    job_id, message_id, zeros = await full_job()
    claim = await worker.claim()
    assert (await jobs.cancel(pool, job_id, actor=alice))["cancel_requested"] is True
    await worker.finish_canceled(claim)
    assert await status_in_metadata(message_id, zeros) == "canceled"

    job_id, message_id, zeros = await full_job()
    lost, lost_id = await worker_session(database_url, "cuda:7")
    lost_claim = await jobs.lock_and_claim(lost, lost_id)
    assert lost_claim is not None and str(lost_claim.job_id) == job_id
    await lost.close()

    async def requeued() -> bool:
        await jobs.requeue_lost(pool)
        return await status_in_metadata(message_id, zeros) == "queued"

    await eventually(requeued)
    assert await worker.fail(await worker.claim(), WORST_ERROR) == "error"
    assert await status_in_metadata(message_id, zeros) == "error"
    conversation = await get_conversation(pool, conversation_id, actor=alice)
    assert len(conversation["messages"]) == 4


async def test_a_message_near_the_old_check_limit_takes_every_transition(
    pool: db.Pool, alice: Actor, conversation_id: str, worker: HandWorker
) -> None:
    """The repro: metadata a few bytes under 002's CHECK (256 KiB of jsonb) made the next claim
    violate it, so every worker that took the job died on it. Rows written under that bound
    (the migration keeps them as they are) now take every transition."""
    job = await jobs.enqueue(
        pool, conversation_id, jobs.JobRequest("p", {}), actor=alice, max_queued=100
    )
    message_id = job["message_id"]

    async def set_blob(length: int) -> int:
        """Write a blob of this length as a row under 002 could hold it; its jsonb size."""
        rows = await pool_rows(
            pool,
            "UPDATE messages SET extra_metadata = extra_metadata || jsonb_build_object('blob', "
            "repeat('b', %s)) WHERE id = %s RETURNING pg_column_size(extra_metadata || '{}')",
            length,
            message_id,
        )
        return int(rows[0]["pg_column_size"])

    # Within 4 bytes of the bound (a numeric's alignment makes the size move in steps), so the
    # claim's 'queued' -> 'processing' (4 bytes more) crossed it.
    length, size = 262_000, 0
    for _ in range(5):
        size = await set_blob(length)
        if 262_141 <= size <= 262_144:
            break
        length += 262_142 - size
    assert 262_141 <= size <= 262_144
    claim = await worker.claim()
    assert str(claim.job_id) == job["job_id"]
    assert await worker.fail(claim, WORST_ERROR, retryable=True) == "queued"
    await worker.complete(await claim_when_due(worker))
    meta = await stored_metadata(pool, message_id)
    assert meta["status"] == "complete" and len(meta["blob"]) > 250_000


TRICKY = [
    {"a": None, "b": [None, {"c": None}], "e": {}, "f": []},
    {'x": null': 'y": null, "', "\\": "\\\\", '"': '"', 'k\\"': None},
    {"é": "\n\t\x01\u2028😀", "n": [1.5, -0.25, 10**20, True, False], "s": "a, b: c"},
    {"deep": {"d": {"d": {"d": [[], [{}], [[None]]]}}}},
]


@pytest.mark.parametrize("value", TRICKY)
async def test_the_database_measures_compact_json_as_python_writes_it(
    pool: db.Pool, value: Any
) -> None:
    """The limit's measure, on the exact path (limit 0): keys and strings holding `": null`,
    quotes, backslashes, control and non-ASCII characters, nulls, numbers, empty containers."""
    rows = await pool_rows(pool, "SELECT gq_jsonb_compact_size(%s, 0) AS size", Jsonb(value))
    assert rows[0]["size"] == compact_size(value)
