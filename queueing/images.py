"""A job's image read by job id alone, for a request that proved its right with a signed link
(web/image_links.py) rather than a token."""

from __future__ import annotations

from uuid import UUID

from . import db
from .errors import NotFound


async def job_image(conn: db.Db, job_id: UUID) -> bytes:
    row = await db.fetch_one(conn, "job_image", {"job_id": job_id, "owner": None})
    if row is None:
        raise NotFound(f"job {job_id} has no image")
    return bytes(row["png"])
