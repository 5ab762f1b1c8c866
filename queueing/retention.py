"""Retention: `gpuqueue prune` deletes what finished jobs leave behind (contract: Operations).

The events (and, when asked, the images) of jobs that finished before a cutoff go, in batches
of small transactions that lock no job row, so the queue never waits on a prune. The jobs stay:
their JSON keeps its status, times and error, with no transitions and (images pruned) no image.
Rows of workers that are gone are removed by the sweep itself, an hour after they stopped
(gq_requeue_lost, migrations/R__queue_functions.sql).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from . import db

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '12h', '7d', '2w' or a sum of them ('1d12h'); a bare number is seconds."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        return timedelta(seconds=float(cleaned))
    if not cleaned or _DURATION.sub("", cleaned).strip():
        raise ValueError(f"{text!r} is not a duration (for example 90s, 30m, 12h, 7d, 1d12h)")
    return timedelta(seconds=sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(cleaned)))


@dataclass
class PruneResult:
    """What a prune removed: events and images, of how many jobs, finished before `cutoff`."""

    cutoff: datetime
    jobs: int = 0
    events: int = 0
    images: int = 0


async def prune(
    conn: db.Db, finished_before: timedelta, *, images: bool = False, batch_size: int = 500
) -> PruneResult:
    """Delete the events (and images) of jobs finished more than `finished_before` ago."""
    cutoff = await db.fetch_value(conn, "prune_cutoff", {"age_s": finished_before.total_seconds()})
    result = PruneResult(cutoff=cutoff)
    after = UUID(int=0)
    while True:
        row = await db.fetch_one(
            conn,
            "prune_batch",
            {"after": after, "cutoff": cutoff, "limit": batch_size, "images": images},
        )
        assert row is not None
        if row["last_id"] is None:
            return result
        after = row["last_id"]
        result.jobs += row["jobs"]
        result.events += row["events"]
        result.images += row["images"]
