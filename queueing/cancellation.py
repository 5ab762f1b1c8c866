"""Stopping background tasks for sure.

On Python 3.11, asyncio.wait_for (used inside psycopg-pool) can swallow a cancellation when the
awaited result arrives at the same moment; a loop that then goes on would make a single
cancel() plus gather() wait forever. So cancel again until the tasks are really done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, every_s: float = 0.5) -> None:
    """Cancel the tasks and wait until each has finished, cancelling again while one runs on."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
