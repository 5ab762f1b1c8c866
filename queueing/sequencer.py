"""A web process's enqueues in batches (issue 14): one statement and one commit for every
enqueue in flight.

Each enqueue of the process goes to its Sequencer, and the enqueues that come while a round
runs go together in the next (queueing/coalesce.py): gq_enqueue_batch inserts each in a
subtransaction of its own (a refused one writes nothing, the others go on) and queues them all
under the event lock, taken once, last, and held to the commit. So under load one commit, and
one wait for its flush, serves the whole batch; a lone enqueue is a batch of one, one round trip
(gq_enqueue's 'place' mode: the same writes, without a subtransaction or a second pass).

`seq` is still drawn only under the event lock and committed before it is released, so it rises
in commit order and `since_seq` replay stays exact; each job's pending and queued events are
written together, in queue_seq order, and each job and its message are inserted queued, written
once. A job is only ever `pending` when a web process of the release before committed it so and
then died: `sweep` queues such a job within a second, and a cancel or a delete queues it first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from psycopg.types.json import Jsonb

from . import db
from .coalesce import Coalescer
from .errors import QueueError, refusal
from .rows import JobJson

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0


class EnqueueFailed(Exception):
    """An item of a batch failed in a way that is not a refusal (its SQLSTATE is not one the
    API maps); the other items of its batch were not affected."""


class Sequencer:
    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool
        self._rounds: Coalescer[dict[str, Any], JobJson] = Coalescer(
            self._enqueue_batch, "gpuqueue-enqueue"
        )

    async def enqueue(self, item: dict[str, Any]) -> JobJson:
        """gq_enqueue's arguments (by name, JSON) -> the queued job's JSON with its queued
        event's seq as `event_seq`, from the next round; a refusal raises its QueueError."""
        return await self._rounds.call(item)

    async def sweep(self) -> None:
        """Forever: queue the pending jobs nobody will (left by a web process that died)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                if await db.fetch_value(self._pool, "jobs_pending_stale"):
                    await db.fetch_value(self._pool, "jobs_sequence_pending")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sequencing stale pending jobs failed; trying again")

    async def _enqueue_batch(self, items: list[dict[str, Any]]) -> list[JobJson | Exception]:
        if len(items) == 1:  # alone: gq_enqueue's one pass, without the batch's subtransaction
            try:
                row = await db.fetch_one(
                    self._pool,
                    "job_enqueue",
                    {**items[0], "params": Jsonb(items[0]["params"]), "mode": "place"},
                )
            except QueueError as refused:
                return [refused]
            assert row is not None
            return [row["job"]]
        rows = await db.fetch_all(self._pool, "jobs_enqueue_batch", {"items": Jsonb(items)})
        answers: list[JobJson | Exception] = [
            EnqueueFailed("the batch answered nothing for this enqueue") for _ in items
        ]
        for row in rows:
            n = row["item"] - 1
            if row["error_code"] is None:
                job: JobJson = row["job"]
                job["event_seq"] = row["seq"]  # type: ignore[typeddict-unknown-key]
                answers[n] = job
            else:
                message = row["error_message"]
                answers[n] = refusal(row["error_code"], message) or EnqueueFailed(
                    f"{row['error_code']}: {message}"
                )
        return answers
