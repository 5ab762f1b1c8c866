"""Pending jobs to queued in batches (issue 14): the web's enqueue off the commit path's lock.

Under load, the web's enqueue commits its job `pending` (gq_enqueue's 'sequence' mode: no
event, no event lock, no NOTIFY), so concurrent enqueues commit and flush side by side instead
of one after another. Then it asks the process's Sequencer for the job: one gq_sequence call
queues every pending job committed so far, in one transaction that holds the event lock once
for all of them, and answers every caller waiting on them. While a call runs, the callers that
come meanwhile wait for the next one, so the batch grows with the load and one commit under the
lock serves it. An enqueue with no other in flight in the process takes the one-commit way
instead ('place': its events in its own transaction), so a lone submit pays no second commit.

`seq` is still drawn only under the event lock and committed before it is released, so it rises
in commit order and `since_seq` replay stays exact; a job's pending and queued events are
written together, after every event of the jobs sequenced before it. A pending job whose
enqueue's web process died before it was sequenced is queued by the next call of any process:
`sweep` makes one every second while such a job waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from . import db
from .rows import JobJson
from .states import JobStatus

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
_WAIT_S = 10.0  # how long a caller waits for a job another transaction holds pending


class EnqueueMode(StrEnum):
    """gq_enqueue's p_mode (queueing/migrations/R__queue_functions.sql says what each does)."""

    COUNT = "count"
    PLACE = "place"
    SEQUENCE = "sequence"


@dataclass(frozen=True)
class Sequenced:
    """A job after its sequencing: its state then, and the seq of its queued event (None when
    it never was queued: canceled while pending, or still held pending when the wait ran out)."""

    seq: int | None
    job: JobJson


class Sequencer:
    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool
        self._waiting: dict[UUID, asyncio.Future[Sequenced | None]] = {}
        self._round: asyncio.Task[None] | None = None
        self._in_flight = 0

    @contextmanager
    def admitted(self) -> Iterator[EnqueueMode]:
        """How an enqueue of this process goes: alone, in one commit; beside others, pending,
        for the sequencer to queue with them."""
        mode = EnqueueMode.SEQUENCE if self._in_flight else EnqueueMode.PLACE
        self._in_flight += 1
        try:
            yield mode
        finally:
            self._in_flight -= 1

    async def sequenced(self, job_id: UUID) -> Sequenced | None:
        """Queue the committed pending job (with every other one); None when it is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _WAIT_S
        while True:
            waiter = self._waiting.get(job_id)
            if waiter is None:
                waiter = self._waiting[job_id] = loop.create_future()
            if self._round is None or self._round.done():
                self._round = asyncio.create_task(self._rounds(), name="gpuqueue-sequencer")
            found = await waiter
            if found is None or found.job["status"] != JobStatus.PENDING or loop.time() > deadline:
                return found

    async def sweep(self) -> None:
        """Forever: queue the pending jobs nobody waits for (their web process died)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                if await db.fetch_value(self._pool, "jobs_pending_stale"):
                    await db.fetch_all(self._pool, "jobs_sequence", {"job_ids": []})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sequencing stale pending jobs failed; trying again")

    async def _rounds(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                rows = await db.fetch_all(self._pool, "jobs_sequence", {"job_ids": list(batch)})
            except Exception as exc:
                for waiter in batch.values():
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            found = {row["job_id"]: Sequenced(row["seq"], row["job"]) for row in rows}
            for job_id, waiter in batch.items():
                if not waiter.done():
                    waiter.set_result(found.get(job_id))
