"""Crash recovery: the jobs of dead worker sessions go back to the queue, every interval.

Racing sweepers are fine (the sweep locks each job it takes back). A sweep that raises is logged
and the next one runs: a job the sweep cannot handle must not take the worker down with it.

A worker is alive while its session is, judged by live_workers from pg_stat_activity's
backend_start. A role without pg_read_all_stats (and not superuser) sees that only for sessions
of roles whose privileges it has, so it would judge every other role's worker dead and requeue
its running job at every sweep: such a sweeper does not sweep while a worker it cannot see is
registered, and says once why and what to grant.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

import psycopg
from psycopg_pool import PoolTimeout

from queueing import db, jobs

log = logging.getLogger(__name__)


class Sweeper:
    """One worker's sweep loop over its pool."""

    def __init__(self, pool: db.Pool, interval_s: float) -> None:
        self._pool = pool
        self._interval_s = interval_s
        self._sees_all = False  # once true, the role's view is complete: no more checks
        self._checked = False
        self._refusing = False
        self._failing: str | None = None

    async def run(self) -> NoReturn:
        while True:
            await self.sweep_once()
            await asyncio.sleep(self._interval_s)

    async def sweep_once(self) -> None:
        """One round; it returns normally whatever went wrong (cancellation aside)."""
        try:
            if await self._allowed():
                for row in await jobs.requeue_lost(self._pool):
                    log.warning("job %s: its worker was lost; now %s", row["id"], row["status"])
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("sweep skipped: %s", exc)
            return
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if text == self._failing:  # the same failure every round: said once, with its trace
                log.debug("sweep failed again: %s", text)
            else:
                log.error(
                    "sweep failed (the next one runs in %g s): %s",
                    self._interval_s,
                    text,
                    exc_info=exc,
                )
            self._failing = text
            return
        if self._failing is not None:
            log.info("sweeping again after: %s", self._failing)
            self._failing = None

    async def _allowed(self) -> bool:
        """Whether this session sees every registered worker's session as it is."""
        if self._sees_all:
            return True
        seen = await db.fetch_one(self._pool, "sweep_visibility")
        assert seen is not None  # an aggregate: always one row
        if seen["sees_all"]:
            self._sees_all = True
            return True
        role, hidden = seen["role"], int(seen["hidden_workers"])
        if not self._checked:
            log.info(
                "role %s has not pg_read_all_stats: it sweeps only while every worker runs under "
                "a role whose sessions it can see",
                role,
            )
            self._checked = True
        if hidden and not self._refusing:
            log.error(
                "not sweeping: role %s cannot see the sessions of %d registered worker(s) of "
                "role(s) %s, so it would judge them dead and requeue their running jobs; "
                "GRANT pg_read_all_stats TO %s (or run every worker under one role)",
                role,
                hidden,
                seen["hidden_roles"],
                role,
            )
        elif not hidden and self._refusing:
            log.info("sweeping again: role %s now sees every registered worker's session", role)
        self._refusing = hidden > 0
        return not self._refusing
