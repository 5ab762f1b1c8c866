"""A conversation's jobs are listed in queue order (issue 10, item 6; contract: Input limits and
ordering): after concurrent submits, positions rise along GET /api/conversations/{id}/jobs."""

from __future__ import annotations

import asyncio

from queueing import db, jobs
from tests.integration.web_support import make_user, new_conversation, running_app


async def test_positions_rise_along_the_listing_after_100_concurrent_submits(
    pool: db.Pool, database_url: str
) -> None:
    """100 submits from 30 connections at once: created_at is each transaction's start, which
    is not the order the queue took them in; the listing follows the queue."""
    async with running_app(database_url) as client:
        user = await make_user(pool, "lister")
        conversation_id = await new_conversation(client, user)
        await asyncio.gather(
            *(
                jobs.enqueue(
                    pool, conversation_id, jobs.JobRequest("p", {}), actor=user.actor,
                    max_queued=1000,
                )
                for _ in range(100)
            )
        )  # fmt: skip
        response = await client.get(
            f"/api/conversations/{conversation_id}/jobs", headers=user.headers
        )
        assert response.status == 200
        listed = [job["queue_position"] for job in (await response.json())["jobs"]]
    assert listed == list(range(1, 101)), listed
