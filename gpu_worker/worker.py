"""The worker loop: claim under the GPU lock, run, record the outcome, claim the next.

Three side tasks keep it honest: a Listener (NOTIFY wakes the loop and cancels running jobs), a
poll timer (a lost NOTIFY never strands a job), and the crash-recovery sweep (jobs of dead
worker sessions go back to the queue). If a side task dies, the worker stops instead of limping
on; the supervisor starts a fresh one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import psycopg
from psycopg_pool import PoolTimeout

from gpu_worker.backends import Backend
from gpu_worker.gpu_lock import GpuSession, LockWatchdog
from gpu_worker.runner import JobRunner, Reason, RunResult, StepGate
from queueing import db, jobs, workers
from queueing.cancellation import cancel_and_wait
from queueing.config import Settings
from queueing.jobs import Backoff, Claim
from queueing.listener import CHANNEL_CANCEL, CHANNEL_EVENT, Listener

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1  # a side task died, or the backend could not load
EXIT_WEDGED = 75  # a pipeline step never returned: the process ends so its GPU is freed

STUCK_GRACE_ENV = "GPUQUEUE_STUCK_GRACE_S"


@dataclass(frozen=True)
class WorkerConfig:
    """The worker's knobs: Settings' shared ones plus a few only the worker reads."""

    poll_interval_s: float = 1.0
    sweep_interval_s: float = 1.0
    lock_warn_s: float = 30.0
    grace_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    probe_interval_s: float = 0.25
    # A real model's step or VAE decode on a CPU can take seconds: only a step that has not
    # returned this long after its job was interrupted counts as wedged.
    stuck_grace_s: float = 10.0
    progress_interval_s: float = 0.1
    reconnect_max_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        return cls(
            poll_interval_s=settings.poll_interval_s,
            sweep_interval_s=settings.sweep_interval_s,
            lock_warn_s=settings.lock_warn_s,
            grace_s=settings.grace_s,
            backoff=Backoff(settings.retry_base_s, settings.retry_cap_s),
            stuck_grace_s=float(os.environ.get(STUCK_GRACE_ENV, 10.0)),
        )


@dataclass
class _Running:
    claim: Claim
    gate: StepGate


def _hard_exit(code: int) -> NoReturn:
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


class Worker:
    """One process, one device, one job at a time."""

    def __init__(
        self,
        url: str,
        *,
        device: str,
        backend: Backend,
        backend_name: str,
        model: str | None = None,
        config: WorkerConfig | None = None,
        hard_exit: Callable[[int], NoReturn] = _hard_exit,
    ) -> None:
        self.url = url
        self.device = device
        self.backend = backend
        self.backend_name = backend_name
        self.model = model
        self.config = config or WorkerConfig()
        self._hard_exit = hard_exit
        self._stopping = asyncio.Event()
        self._stop_at: float | None = None
        self._wake = asyncio.Event()
        self._running: _Running | None = None
        self._session: GpuSession | None = None
        self._watchdog = LockWatchdog(device, self.config.lock_warn_s)
        self.jobs_done = 0
        self.sessions = 0

    @property
    def worker_id(self) -> str | None:
        """The current registration (it changes when the session is lost and re-made)."""
        return None if self._session is None else str(self._session.worker_id)

    # -- stopping -------------------------------------------------------------------------

    def request_stop(self, *, immediately: bool = False) -> None:
        """Stop claiming; the running job gets grace_s to finish. A second call: no grace."""
        now = time.monotonic()
        if self._stop_at is None and not immediately:
            self._stop_at = now + self.config.grace_s
            log.info(
                "stop requested: no new jobs; a running job has %g s to finish", self.config.grace_s
            )
        else:
            self._stop_at = now
            log.info("stopping now: a running job is interrupted and handed back to the queue")
        self._stopping.set()
        if self._running is not None:
            self._running.gate.stop_by(self._stop_at)

    # -- the whole life -------------------------------------------------------------------

    async def run(self) -> int:
        """Load the backend, then work until stopped. Returns the process exit code."""
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpuqueue-pipeline")
        pool = db.make_pool(self.url, "gpuqueue-worker-pool", min_size=1, max_size=4)
        await pool.open(wait=False)
        listener = Listener(
            self.url, (CHANNEL_EVENT, CHANNEL_CANCEL), self._on_notify,
            on_connect=self._wake.set, app="gpuqueue-worker-listen",
        )
        side = {
            asyncio.create_task(listener.run(), name="listener"),
            asyncio.create_task(self._sweep_forever(pool), name="sweeper"),
        }
        main = asyncio.create_task(self._work(executor, pool), name="work")
        code = EXIT_OK
        try:
            done, _ = await asyncio.wait({main, *side}, return_when=asyncio.FIRST_COMPLETED)
            if main not in done:
                for task in done:
                    exc = task.exception()
                    log.error("the %s task ended unexpectedly; stopping", task.get_name(),
                              exc_info=exc)
                code = EXIT_FAILED
                self.request_stop(immediately=True)  # no grace: the worker is unsound
            code = max(code, await main)
        finally:
            await cancel_and_wait([*side, main])
            await pool.close()
            executor.shutdown(wait=False, cancel_futures=True)
        return code

    async def _work(self, executor: concurrent.futures.ThreadPoolExecutor, pool: db.Pool) -> int:
        if not await self._load(executor):
            return EXIT_FAILED
        if self._stopping.is_set():
            return EXIT_OK
        runner = JobRunner(
            self.backend, executor, pool,
            probe_interval_s=self.config.probe_interval_s,
            stuck_grace_s=self.config.stuck_grace_s,
            progress_interval_s=self.config.progress_interval_s,
        )
        try:
            while not self._stopping.is_set():
                session = self._session or await self._connect()
                if session is None:
                    break
                self._wake.clear()
                try:
                    claim = await self._claim(session)
                except psycopg.OperationalError as exc:
                    await self._lost(session, pool, f"while claiming ({exc})")
                    continue
                if claim is None:
                    await self._idle()
                    continue
                await self._process(session, claim, runner, pool)
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None
        log.info("worker stopped after %d job(s)", self.jobs_done)
        return EXIT_OK

    async def _load(self, executor: concurrent.futures.ThreadPoolExecutor) -> bool:
        """Load the pipeline once, before the first claim: never hold a job we cannot run."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        log.info("loading the %s backend for %s", self.backend_name, self.device)
        loading: asyncio.Future[Any] = loop.run_in_executor(executor, self.backend.load)
        stop: asyncio.Future[Any] = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({loading, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not loading.done():
            log.info("stop requested while the backend loads; exiting without waiting for it")
            self._hard_exit(EXIT_OK)
        try:
            loading.result()
        except Exception:
            log.exception("the %s backend failed to load on %s", self.backend_name, self.device)
            return False
        log.info("backend ready in %.1f s", time.monotonic() - started)
        return True

    async def _connect(self) -> GpuSession | None:
        """Open a session as a new worker, retrying while the database is unreachable."""
        backoff = 0.05
        while not self._stopping.is_set():
            try:
                session = await GpuSession.open(
                    self.url, device=self.device, backend=self.backend_name, model=self.model
                )
            except psycopg.OperationalError as exc:
                log.warning("cannot open the worker session (%s); retrying in %.2f s", exc, backoff)
                await self._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_s)
                continue
            self._session = session
            self.sessions += 1
            log.info(
                "worker %s registered on %s (backend %s, session pid %d)",
                session.worker_id, self.device, self.backend_name, session.backend_pid,
            )
            return session
        return None

    async def _lost(self, session: GpuSession, pool: db.Pool, context: str) -> None:
        """The session died: its GPU lock and worker id are gone. Come back as a new worker."""
        log.warning(
            "worker %s lost its session %s; its job (if any) is left to the sweep; "
            "reconnecting as a new worker", session.worker_id, context,
        )
        self._session = None
        await session.abandon()
        try:
            await workers.mark_stopped(pool, session.worker_id)
        except (psycopg.Error, PoolTimeout) as exc:
            log.debug("could not mark the old worker stopped: %s", exc)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _idle(self) -> None:
        """Wait for a NOTIFY, the poll interval, or a stop, whichever comes first."""
        waits = {
            asyncio.create_task(self._wake.wait()),
            asyncio.create_task(self._stopping.wait()),
        }
        try:
            await asyncio.wait(
                waits, timeout=self.config.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waits:
                task.cancel()

    async def _claim(self, session: GpuSession) -> Claim | None:
        """Claim under the GPU lock; a stop while waiting for the lock cancels the wait."""
        claiming = asyncio.ensure_future(session.claim())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({claiming, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if claiming.done():
            return claiming.result()
        # Only the claim runs on the session now, so the cancel can hit nothing else.
        await session.interrupt_claim()
        try:
            claim = await claiming
        except psycopg.errors.QueryCanceled:
            return None
        if claim is not None:  # the claim won the race against the cancel: hand it back
            await session.requeue(claim)
        return None

    # -- one job --------------------------------------------------------------------------

    async def _process(
        self, session: GpuSession, claim: Claim, runner: JobRunner, pool: db.Pool
    ) -> None:
        gate = StepGate(timeout_s=claim.timeout_s)
        if self._stop_at is not None:
            gate.stop_by(self._stop_at)
        self._running = _Running(claim, gate)
        self._watchdog.held(claim)
        log.debug(
            "job %s: processing on %s (attempt %d of %d, timeout %d s)",
            claim.job_id, self.device, claim.attempts, claim.max_attempts, claim.timeout_s,
        )
        try:
            try:
                result = await runner.run(claim, gate, session.probe)
            except BaseException:
                gate.flag(Reason.LOST)  # whatever went wrong here, the pipeline thread stops
                raise
            if result.wedged:
                await self._give_up(session, claim, result)
            if result.reason is Reason.LOST:
                await self._lost(session, pool, f"while job {claim.job_id} ran")
                return
            try:
                await self._record(session, claim, result)
            except psycopg.OperationalError as exc:
                await self._lost(session, pool, f"while ending job {claim.job_id} ({exc})")
        finally:
            self._watchdog.released()
            self._running = None

    async def _record(self, session: GpuSession, claim: Claim, result: RunResult) -> None:
        """Write the job's end and release the GPU lock, in one round trip."""
        job = claim.job_id
        reason = result.reason
        if reason is None and result.png is not None:
            try:
                stored = await session.complete(claim, result.png)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:  # e.g. the backend returned something that is no PNG
                log.error("job %s: the image could not be stored (%s)", job, exc)
                await session.fail(
                    claim, f"the image could not be stored: {exc}", retryable=False,
                    backoff=self.config.backoff,
                )
                return
            self.jobs_done += 1
            log.info("job %s: complete in %.2f s%s", job, result.elapsed_s,
                     "" if stored else " (claim was stale: result discarded)")
        elif reason is None:
            error = result.error or "the pipeline failed"
            status = await session.fail(
                claim, error, retryable=result.retryable, backoff=self.config.backoff
            )
            self.jobs_done += 1
            log.warning(
                "job %s: the pipeline failed after %.2f s (attempt %d of %d); now %s: %s",
                job, result.elapsed_s, claim.attempts, claim.max_attempts, status or "stale",
                error, exc_info=result.exception,
            )
        elif reason is Reason.TIMEOUT:
            error = timeout_message(result.elapsed_s, claim.timeout_s)
            await session.fail(claim, error, retryable=False, backoff=self.config.backoff)
            self.jobs_done += 1
            log.warning("job %s: %s", job, error)
        elif reason is Reason.CANCEL:
            await session.finish_canceled(claim)
            self.jobs_done += 1
            log.info("job %s: canceled after %.2f s", job, result.elapsed_s)
        elif reason is Reason.STOP:
            status = await session.requeue(claim)
            log.info("job %s: handed back to the queue (%s) because the worker is stopping",
                     job, status or "stale")
        else:  # STALE: the job is no longer ours; this only releases the GPU lock
            await session.requeue(claim)
            log.warning("job %s: the claim went stale while it ran; result discarded", job)

    async def _give_up(self, session: GpuSession, claim: Claim, result: RunResult) -> NoReturn:
        """Last resort: a step never returned after the job was interrupted.

        The thread cannot be killed, and the GPU may be wedged with it, so the job's end is
        written and the process exits: its session closes, the GPU lock is freed, and the
        supervisor starts a fresh worker.
        """
        reason = result.reason
        log.error(
            "job %s: a pipeline step has not returned %.0f s after the job was interrupted (%s); "
            "ending this worker process (exit %d) so that the GPU is freed",
            claim.job_id, self.config.stuck_grace_s, reason.value if reason else "?", EXIT_WEDGED,
        )
        try:
            async with asyncio.timeout(5.0):
                if reason is Reason.TIMEOUT:
                    message = timeout_message(result.elapsed_s, claim.timeout_s)
                    await session.fail(
                        claim, f"{message}; the step never returned, so its worker was restarted",
                        retryable=False, backoff=self.config.backoff,
                    )
                elif reason is Reason.CANCEL:
                    await session.finish_canceled(claim)
                elif reason in (Reason.STOP, Reason.STALE):
                    await session.requeue(claim)
                if reason is not Reason.LOST:
                    await workers.mark_stopped(session.conn, session.worker_id)
        except Exception as exc:
            log.error("job %s: could not record its end (%s); the sweep will", claim.job_id, exc)
        self._hard_exit(EXIT_WEDGED)

    # -- side tasks -----------------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CHANNEL_CANCEL:
            running = self._running
            if running is not None and str(running.claim.job_id) == payload:
                log.info("job %s: cancel requested", payload)
                running.gate.flag(Reason.CANCEL)
        else:
            self._wake.set()

    async def _sweep_forever(self, pool: db.Pool) -> None:
        """Crash recovery: requeue the jobs of dead worker sessions. Racing sweepers are fine."""
        while True:
            try:
                for row in await jobs.requeue_lost(pool):
                    log.warning("job %s: its worker was lost; now %s", row["id"], row["status"])
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("sweep skipped: %s", exc)
            await asyncio.sleep(self.config.sweep_interval_s)


def timeout_message(elapsed_s: float, timeout_s: int) -> str:
    """The error a user sees for a job past its deadline (R6.1, R6.3)."""
    return f"timed out after {elapsed_s:.1f} s (timeout_s={timeout_s})"
