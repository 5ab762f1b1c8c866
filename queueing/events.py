"""The transition log (job_events) as live clients read it: after a seq, in seq order.

Rows are written under the event lock, so seq order is commit order: a reader that asks for
"everything after the last seq I saw" never skips a row that commits late.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast
from uuid import UUID

from . import db
from .rows import EventRow, ProgressRow


async def last_seq(conn: db.Db) -> int:
    """The newest event's seq (0 when there is none)."""
    return int(await db.fetch_value(conn, "events_last_seq"))


async def events_after(
    conn: db.Db,
    after: int,
    *,
    conversation_ids: Iterable[UUID] | None = None,
    job_ids: Iterable[UUID] | None = None,
    until: int | None = None,
    limit: int = 1000,
) -> list[EventRow]:
    """Up to `limit` events with seq > `after` (and <= `until`) in seq order ('pending' left
    out), optionally only those of some conversations or jobs. Rows: seq, job_id,
    conversation_id, event (the dict the WebSocket sends), the job's sort keys."""
    rows = await db.fetch_all(
        conn,
        "events_after",
        {
            "after": after,
            "conversation_ids": None if conversation_ids is None else list(conversation_ids),
            "job_ids": None if job_ids is None else list(job_ids),
            "until": until,
            "limit": limit,
        },
    )
    return cast("list[EventRow]", rows)


async def progress_of(conn: db.Db, job_ids: Iterable[UUID]) -> list[ProgressRow]:
    """The last reported step of those of the jobs that are processing (job_id,
    conversation_id, progress), and the preview stored with that step (else None)."""
    ids = list(job_ids)
    if not ids:
        return []
    return cast("list[ProgressRow]", await db.fetch_all(conn, "progress_of_jobs", {"job_ids": ids}))
