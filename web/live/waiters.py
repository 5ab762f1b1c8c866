"""POST /cancel waits for a running job to stop: the fan-out, which sees every event anyway,
wakes the waiters of a job when its final event goes by, so the handler need not poll hard."""

from __future__ import annotations

import asyncio
from uuid import UUID


class CancelWaiters:
    def __init__(self) -> None:
        self._waiters: dict[UUID, set[asyncio.Event]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiters)

    def watch(self, job_id: UUID) -> asyncio.Event:
        """An event set when the job's next final transition (complete/error/canceled) is seen."""
        waiter = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(waiter)
        return waiter

    def unwatch(self, job_id: UUID, waiter: asyncio.Event) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[job_id]

    def ended(self, job_id: UUID) -> None:
        """The job reached a final state: wake whoever waits for it."""
        for waiter in self._waiters.get(job_id, ()):
            waiter.set()
