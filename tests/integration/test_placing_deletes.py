"""A deleted conversation takes its jobs' events with it, so a web process that had not read
them would keep its queued jobs in its queue order for ever (positions behind them one too
high). It learns of the delete from its NOTIFY, or, having missed that, by asking which of the
conversations it holds jobs of are gone."""

from __future__ import annotations

from queueing import conversations, db, events, jobs
from queueing.actors import Actor
from web.live.placing import Placing


async def test_an_order_that_missed_a_delete_forgets_the_deleted_jobs(
    pool: db.Pool, alice: Actor
) -> None:
    doomed = await conversations.create_conversation(pool, actor=alice, title="doomed")
    kept = await conversations.create_conversation(pool, actor=alice, title="kept")
    for conversation in (doomed, doomed, kept):
        await jobs.enqueue(
            pool, conversation["id"], jobs.JobRequest("p", {}), actor=alice, max_queued=100
        )
    placing = Placing(pool)
    await placing.load()
    [last] = placing.order.in_conversation(kept["id"])
    assert placing.place(last).queue_position == 3  # type: ignore[union-attr]

    # Deleted while this process was not listening: the events it would have read are gone.
    await conversations.cancel_conversation_jobs(pool, doomed["id"], actor=alice)
    await conversations.delete_conversation(pool, doomed["id"], actor=alice)
    await placing.follow(await events.events_after(pool, placing.seq))
    assert placing.place(last).queue_position == 3  # type: ignore[union-attr]  # a phantom

    assert await placing.forget_deleted_conversations()
    assert placing.place(last).queue_position == 1  # type: ignore[union-attr]
    assert placing.order.in_conversation(doomed["id"]) == frozenset()
    assert not await placing.forget_deleted_conversations()  # nothing more to forget
