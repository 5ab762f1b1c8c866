"""Live queue positions and ETAs, always computed from the database on read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import cast
from uuid import UUID

from . import db
from .eta import EtaModel, backoff_left_s
from .rows import JobJson, QueueCounts, QueuedJob, StatusCount, SubscribedPosition
from .states import JobStatus


async def eta_model(conn: db.Db) -> EtaModel:
    row = await db.fetch_one(conn, "eta_context")
    assert row is not None
    return EtaModel.from_context(row)


class EtaCache:
    """The ETA model, re-read at most once per `ttl_s`: one eta_context query serves every
    request of a busy second, and concurrent callers share the one refresh in flight."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._model: EtaModel | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, conn: db.Db, *, max_age_s: float | None = None) -> EtaModel:
        """The cached model while younger than `max_age_s` (default: the ttl), else a new one."""
        max_age = self.ttl_s if max_age_s is None else max_age_s
        if self._model is not None and time.monotonic() - self._read_at < max_age:
            return self._model
        async with self._lock:
            if self._model is not None and time.monotonic() - self._read_at < max_age:
                return self._model
            started = time.monotonic()
            model = await eta_model(conn)
            self._model, self._read_at = model, started
            return model


def with_eta(job: JobJson, model: EtaModel) -> JobJson:
    """Add eta_s to a job dict (null unless queued with a known model); a job waiting out a
    retry's backoff starts no earlier than its run_after."""
    if job.get("status") != JobStatus.QUEUED:
        job["eta_s"] = None
        return job
    position = job.get("queue_position") or 0
    job["eta_s"] = model.eta_s(position, backoff_left_s(job.get("run_after")))
    return job


async def job_position(conn: db.Db, job_id: UUID | str) -> int | None:
    """One job's position (0 when not queued, None when no such job)."""
    # prepare=False: a generic cached plan can scan the whole index even for the head.
    row = await db.fetch_one(conn, "job_position", {"job_id": job_id}, prepare=False)
    return None if row is None else int(row["queue_position"])


async def positions_of(conn: db.Db, job_ids: Iterable[UUID | str]) -> dict[str, int]:
    """Positions of those of the given jobs that are queued, keyed by job id as text."""
    ids = [i if isinstance(i, UUID) else UUID(str(i)) for i in job_ids]
    if not ids:
        return {}
    row = await db.fetch_one(conn, "positions_of_jobs", {"job_ids": ids}, prepare=False)
    assert row is not None
    return {str(i): p for i, p in zip(ids, row["positions"], strict=True) if p is not None}


async def positions_in_subscriptions(
    conn: db.Db, *, conversation_ids: Iterable[UUID] = (), job_ids: Iterable[UUID] = ()
) -> list[SubscribedPosition]:
    """Queued jobs of some conversations and some job ids, with their positions, and `at_seq`:
    the newest event the snapshot reflects (rows: job_id, queue_position, at_seq)."""
    rows = await db.fetch_all(
        conn,
        "positions_in_subscriptions",
        {"conversation_ids": list(conversation_ids), "job_ids": list(job_ids)},
        prepare=False,
    )
    return cast("list[SubscribedPosition]", rows)


async def queue_counts(conn: db.Db) -> QueueCounts:
    """How many jobs are queued and processing, and the oldest queued job's age in seconds."""
    row = await db.fetch_one(conn, "queue_counts")
    assert row is not None
    return cast(QueueCounts, row)


async def queue_overview(conn: db.Db) -> list[StatusCount]:
    """Jobs per status (every status, zero included), with the oldest queued age."""
    return cast("list[StatusCount]", await db.fetch_all(conn, "queue_overview"))


async def queue_head(conn: db.Db, limit: int = 50) -> list[QueuedJob]:
    """The first `limit` queued jobs in the order they will be taken, with their positions and
    their owners' names."""
    rows = await db.fetch_all(conn, "queue_head_with_users", {"limit": limit}, prepare=False)
    return cast("list[QueuedJob]", rows)
