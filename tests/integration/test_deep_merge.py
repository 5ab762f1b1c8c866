"""Message metadata: a real recursive merge, safe under concurrency (R3.5, R7.1-7.5)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from queueing import db, jobs
from queueing.actors import Actor
from queueing.conversations import get_conversation, merge_metadata
from queueing.errors import NotFound
from tests import queries
from tests.helpers import worker_session

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 16


async def merged(pool: db.Pool, base: Any, patch: Any) -> Any:
    return await queries.fetch_value(
        pool,
        "jsonb_deep_merge",
        {"base": psycopg.types.json.Jsonb(base), "patch": psycopg.types.json.Jsonb(patch)},
    )


async def new_message(pool: db.Pool, actor: Actor, conversation_id: str) -> str:
    job = await jobs.enqueue(
        pool, conversation_id, jobs.JobRequest("p", {}), actor=actor, max_queued=100
    )
    return str(job["message_id"])


@pytest.mark.parametrize(
    ("base", "patch", "expected"),
    [
        (
            {"a": {"b": 1, "c": {"d": 2}}},
            {"a": {"c": {"e": 3}}},
            {"a": {"b": 1, "c": {"d": 2, "e": 3}}},
        ),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
        ({"a": 5}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        ({"a": 1, "b": 2}, {"b": None}, {"a": 1, "b": None}),
        ({}, {"x": {"y": {"z": 1}}}, {"x": {"y": {"z": 1}}}),
        ({"k": "v"}, {}, {"k": "v"}),
    ],
)
async def test_deep_merge_merges_objects_at_every_depth(
    pool: db.Pool, base: Any, patch: Any, expected: Any
) -> None:
    """R7.2, R7.3: nested objects merge; arrays and scalars replace; JSON null is a value."""
    assert await merged(pool, base, patch) == expected


async def test_fifty_concurrent_merges_of_distinct_nested_keys_lose_none(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """R7.1, R3.5: 50 merges into one message from many connections at once keep every field."""
    message_id = await new_message(pool, alice, conversation_id)
    await asyncio.gather(
        *(
            merge_metadata(
                pool, message_id, {"ui": {"votes": {f"user{i}": i}}, f"top{i}": True}, actor=alice
            )
            for i in range(50)
        )
    )
    conversation = await get_conversation(pool, conversation_id, actor=alice)
    meta = conversation["messages"][0]["extra_metadata"]
    assert meta["ui"]["votes"] == {f"user{i}": i for i in range(50)}
    assert all(meta[f"top{i}"] for i in range(50))
    assert meta["job_id"] and meta["status"] == "queued"


async def test_merges_racing_job_transitions_keep_both(
    pool: db.Pool, database_url: str, alice: Actor, conversation_id: str
) -> None:
    """R3.5: user merges and the queue's own status writes into the same message lose nothing."""
    message_id = await new_message(pool, alice, conversation_id)
    session, worker_id = await worker_session(database_url)

    async def run_job() -> None:
        claim = await jobs.lock_and_claim(session, worker_id)
        assert claim is not None
        for step in range(1, 4):
            await jobs.report_progress(pool, claim, step, 3)
        await jobs.complete(session, claim, PNG, release_device=claim.gpu_lock)

    await asyncio.gather(
        run_job(),
        *(
            merge_metadata(pool, message_id, {"notes": {f"n{i}": i}}, actor=alice)
            for i in range(30)
        ),
    )
    conversation = await get_conversation(pool, conversation_id, actor=alice)
    meta = conversation["messages"][0]["extra_metadata"]
    assert meta["status"] == "complete" and meta["queue_position"] == 0
    assert meta["notes"] == {f"n{i}": i for i in range(30)}
    await session.close()


async def test_updated_at_is_set_on_every_update(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """R7.4."""
    message_id = await new_message(pool, alice, conversation_id)
    stamps = [
        (await merge_metadata(pool, message_id, {"n": i}, actor=alice))["updated_at"]
        for i in range(3)
    ]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3


async def test_a_failed_transaction_rolls_back_whole(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """R7.5: a merge inside a transaction that fails later leaves the message as it was."""
    message_id = await new_message(pool, alice, conversation_id)
    before = (await get_conversation(pool, conversation_id, actor=alice))["messages"]
    async with pool.connection() as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with conn.transaction():
                await merge_metadata(conn, message_id, {"half": "written"}, actor=alice)
                await conn.execute("SELECT 1 / 0")
    assert (await get_conversation(pool, conversation_id, actor=alice))["messages"] == before


async def test_another_users_message_cannot_be_merged(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    message_id = await new_message(pool, alice, conversation_id)
    with pytest.raises(NotFound):
        await merge_metadata(pool, message_id, {"x": 1}, actor=Actor(user_id=alice.user_id + 99))
