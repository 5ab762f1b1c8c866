"""A listing's places are of the state its jobs are (issue 14): the web process's queue order
follows the log in pages, so by the time it has reached a read's seq it may already be past it;
a page that then took its places from the later state would show a conversation the queue
never was (the chaos run caught one: jobs of one seq, positions of another)."""

from __future__ import annotations

import asyncio
import time

from queueing import db, events, jobs
from queueing.actors import Actor
from queueing.conversations import create_conversation, get_conversation
from queueing.rows import ConversationWithMessages
from web.live.placing import Placing


async def test_a_listing_never_shows_its_jobs_with_the_places_of_a_later_state(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    other = str((await create_conversation(pool, actor=alice, title="other"))["id"])
    request = jobs.JobRequest(prompt="a fox", params={})
    await jobs.enqueue(pool, conversation_id, request, actor=alice, max_queued=100)
    placing = Placing(pool)
    loaded = await placing.load()
    # The database moves on while the order has not followed yet: the read will wait for it.
    await jobs.enqueue(pool, other, request, actor=alice, max_queued=100)
    listing = asyncio.create_task(
        jobs.list_jobs(pool, conversation_id, actor=alice, placer=placing)
    )
    deadline = time.monotonic() + 5
    while not placing._waiting:  # the read is made and waits for the order to reach its seq
        assert time.monotonic() < deadline, "the listing never waited for the order"
        await asyncio.sleep(0.01)
    # Then a higher-priority job joins the conversation, and the order follows both events.
    urgent = jobs.JobRequest(prompt="urgent", params={}, priority=1)
    await jobs.enqueue(pool, conversation_id, urgent, actor=alice, max_queued=100)
    await placing.follow(await events.events_after(pool, loaded))
    shown = await asyncio.wait_for(listing, 10)
    # Whatever state it shows, it is one state: the same read counted in SQL agrees with it.
    counted = await jobs.list_jobs(pool, conversation_id, actor=alice)
    assert shown["seq"] == counted["seq"]
    assert [(j["job_id"], j["queue_position"]) for j in shown["jobs"]] == [
        (j["job_id"], j["queue_position"]) for j in counted["jobs"]
    ]


async def test_a_conversations_messages_take_their_positions_from_the_queue_order(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """GET /api/conversations/{id} places its queued messages from the web's queue order, as the
    job listing does, instead of counting the queue once per queued message."""
    request = jobs.JobRequest(prompt="a fox", params={})
    queued = [
        (await jobs.enqueue(pool, conversation_id, request, actor=alice, max_queued=100))["job_id"]
        for _ in range(3)
    ]
    placing = Placing(pool)
    await placing.load()
    # Behind the order's back (no event), the last job jumps the queue: a count now says 1st,
    # the order still says 3rd, so the two ways of placing it can be told apart.
    async with pool.connection() as conn:
        await conn.execute("UPDATE jobs SET priority = 1 WHERE id = %s", (queued[-1],))
    counted = await get_conversation(pool, conversation_id, actor=alice)
    placed = await get_conversation(pool, conversation_id, actor=alice, placer=placing)

    def positions(conversation: ConversationWithMessages) -> list[int]:
        return [
            m["extra_metadata"]["queue_position"]
            for m in conversation["messages"]
            if m["role"] == "assistant"
        ]

    assert positions(counted) == [2, 3, 1]
    assert positions(placed) == [1, 2, 3]
    assert set(placed) == set(counted) == {"id", "title", "created_at", "messages"}
