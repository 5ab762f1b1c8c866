"""Live queue positions and ETAs, always computed from the database on read."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from . import db
from .eta import EtaModel


async def eta_model(conn: db.Db) -> EtaModel:
    row = await db.fetch_one(conn, "eta_context")
    assert row is not None
    return EtaModel.from_context(row)


def with_eta(job: dict[str, Any], model: EtaModel) -> dict[str, Any]:
    """Add eta_s to a job dict (null unless queued with a known model)."""
    position = job.get("queue_position") or 0
    job["eta_s"] = model.eta_s(position) if job.get("status") == "queued" else None
    return job


async def job_position(conn: db.Db, job_id: UUID | str) -> int | None:
    """One job's position (0 when not queued, None when no such job)."""
    # prepare=False: a generic cached plan can scan the whole index even for the head.
    row = await db.fetch_one(conn, "job_position", {"job_id": job_id}, prepare=False)
    return None if row is None else int(row["queue_position"])


async def positions_of(conn: db.Db, job_ids: Iterable[UUID | str]) -> dict[str, int]:
    """Positions of those of the given jobs that are queued, keyed by job id as text."""
    ids = [str(i) for i in job_ids]
    if not ids:
        return {}
    rows = await db.fetch_all(conn, "positions_of_jobs", {"job_ids": ids}, prepare=False)
    return {str(r["job_id"]): int(r["queue_position"]) for r in rows}
