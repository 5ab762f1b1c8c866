"""Live queue positions and ETAs, always computed from the database on read."""

from __future__ import annotations

from typing import cast

from . import db
from .cached import Cached
from .cost_model import SAMPLES
from .eta import EtaModel, backoff_left_s
from .rows import (
    CostSampleRow,
    EtaGpuRow,
    EtaShareRow,
    JobJson,
    QueueCounts,
    QueuedJob,
    StatusCount,
)
from .states import JobStatus


async def cost_samples(conn: db.Db) -> list[CostSampleRow]:
    """The cost model's data: aggregates of the latest run times per model and host."""
    return cast(
        "list[CostSampleRow]", await db.fetch_all(conn, "cost_samples", {"window": SAMPLES})
    )


async def eta_model(conn: db.Db, samples: list[CostSampleRow] | None = None) -> EtaModel:
    """The cost fits (from `samples` when given), every model's live GPUs and fair-share
    backlogs, as of now (small reads)."""
    if samples is None:
        samples = await cost_samples(conn)
    gpus = await db.fetch_all(conn, "eta_gpus")
    shares = await db.fetch_all(conn, "eta_shares")
    return EtaModel.from_rows(
        samples, cast("list[EtaGpuRow]", gpus), cast("list[EtaShareRow]", shares)
    )


class EtaCache(Cached[EtaModel]):
    """The ETA model (cost fits, live GPUs, fair-share backlogs), re-read at most once per
    `ttl_s`; the web's fan-out marks it outdated when a GPU takes or ends a job, so the next
    read after that is at most `min_age_s` older than it (a second-old model could tell a job
    the remaining time of one that had ended ahead of it). The fits move slowly and their read
    grows with the fleet (a window of jobs per model and host), so they are read at most once
    per `ttl_s` all the same."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self._samples = Cached(cost_samples, ttl_s)
        super().__init__(self._read_model, ttl_s)

    async def _read_model(self, conn: db.Db) -> EtaModel:
        return await eta_model(conn, await self._samples.get(conn))


def with_eta(job: JobJson, model: EtaModel) -> JobJson:
    """Add eta_s to a job dict, in place of the work ahead it is computed from (null unless
    queued with a known cost model and a live GPU); a job waiting out a retry's backoff starts
    no earlier than its run_after."""
    work_ahead = job.pop("work_ahead", 0.0)
    start_tag = job.pop("start_tag", None)
    if job["status"] != JobStatus.QUEUED:
        job["eta_s"] = None
        return job
    job["eta_s"] = model.eta_s(
        job["model"],
        job["queue_position"],
        work_ahead,
        start_tag,
        not_before_s=backoff_left_s(job["run_after"]),
    )
    return job


async def queue_counts(conn: db.Db) -> QueueCounts:
    """How many jobs are queued and processing, and the oldest queued job's age in seconds."""
    row = await db.fetch_one(conn, "queue_counts")
    assert row is not None
    return cast(QueueCounts, row)


async def queue_overview(conn: db.Db) -> list[StatusCount]:
    """Jobs per status (every status, zero included), with the oldest queued age."""
    return cast("list[StatusCount]", await db.fetch_all(conn, "queue_overview"))


async def queue_head(conn: db.Db, limit: int = 50) -> list[QueuedJob]:
    """The first `limit` queued jobs of each model in the order they will be taken, with their
    positions and their owners' names."""
    rows = await db.fetch_all(conn, "queue_head_with_users", {"limit": limit}, prepare=False)
    return cast("list[QueuedJob]", rows)
