"""Worker registry: a worker is alive exactly while its database session is."""

from __future__ import annotations

import os
import socket
from uuid import UUID

from . import db


async def register(
    session: db.Connection, worker_id: UUID, *, device: str, backend: str, model: str | None
) -> None:
    """Record the worker under the session that runs this: that session is its liveness."""
    await db.fetch_one(
        session,
        "worker_register",
        {
            "worker_id": worker_id,
            "device": device,
            "backend": backend,
            "model": model,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        },
    )


async def mark_stopped(conn: db.Db, worker_id: UUID) -> None:
    await db.fetch_all(conn, "worker_stop", {"worker_id": worker_id})


async def live_workers(conn: db.Db) -> list[db.Row]:
    """Live workers with their device, current job and how long they have held the GPU lock."""
    return await db.fetch_all(conn, "workers_live")
