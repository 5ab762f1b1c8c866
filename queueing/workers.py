"""Worker registry: a worker is alive exactly while its database session is."""

from __future__ import annotations

import os
import socket
from typing import cast
from uuid import UUID

from . import db
from .models import ModelCapabilities
from .rows import WorkerRow

UNDESCRIBED = ("size_multiple", "default_size", "default_steps", "default_guidance")


async def register(
    session: db.Connection,
    worker_id: UUID,
    *,
    host: str,
    device: str,
    backend: str,
    model: str,
    capabilities: ModelCapabilities | None = None,
) -> str:
    """Record the worker under the session that runs this: that session is its liveness.
    `capabilities`, when the backend reports them, are stored on the model's row.

    Returns the name of its GPU's lock (host/device), which the end of each job releases.
    """
    row = await db.fetch_one(
        session,
        "worker_register",
        {
            "worker_id": worker_id,
            "host": host,
            "device": device,
            "backend": backend,
            "model": model,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "described": capabilities is not None,
            **(capabilities.params() if capabilities else dict.fromkeys(UNDESCRIBED)),
        },
    )
    assert row is not None
    return str(row["gpu_lock"])


async def mark_stopped(conn: db.Db, worker_id: UUID) -> None:
    await db.fetch_all(conn, "worker_stop", {"worker_id": worker_id})


async def live_workers(conn: db.Db) -> list[WorkerRow]:
    """Live workers with their host and device, current job and how long they have held the
    GPU lock."""
    return cast("list[WorkerRow]", await db.fetch_all(conn, "workers_live"))
