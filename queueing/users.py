"""Users' share of the GPUs (contract: Fair share)."""

from __future__ import annotations

from . import db
from .errors import NotFound


async def set_weight(conn: db.Db, name: str, weight: float) -> float:
    """Give the user `name` a weight (default 1): twice the weight, twice the GPU share. It
    counts for the jobs queued from now on; those waiting keep their places."""
    row = await db.fetch_one(conn, "user_set_weight", {"name": name, "weight": weight})
    if row is None:
        raise NotFound(f"no user is named {name!r}")
    return float(row["weight"])
