"""The worker loop: claim under the GPU lock, run, record the outcome, claim the next.

A GPU is (host, device). Before each claim the worker takes its GPU's OS-level lock (an flock,
gpu_worker/device_lock.py) and keeps it until the pipeline has stopped; the claim then takes the
database's GPU lock if it is free. A worker that finds either busy waits outside any statement,
for a NOTIFY, its poll interval or a stop. A completion carries the next claim in its round
trip (GpuSession.complete_and_claim) unless another process waits for the GPU; the OS-level
lock is then kept for the job it brings.

Three side tasks keep it honest: a Listener (NOTIFY wakes the loop and cancels running jobs), a
poll timer (a lost NOTIFY never strands a job), and the crash-recovery sweep (jobs of dead
worker sessions go back to the queue). If a side task dies, the worker stops instead of limping
on; the supervisor starts a fresh one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import psycopg
from psycopg_pool import PoolTimeout

from gpu_worker.backends import Backend
from gpu_worker.device_lock import DeviceLock
from gpu_worker.gpu_lock import CHANNEL_GPU, GpuSession, Handoff, LockWatchdog
from gpu_worker.runner import JobRunner, Reason, RunResult, StepGate, error_message
from gpu_worker.sweeper import Sweeper
from queueing import db, log_context, workers
from queueing.cancellation import cancel_and_wait
from queueing.config import BUILTIN_MODEL, Settings, default_gpu_lock_dir
from queueing.errors import QueueError
from queueing.jobs import Backoff, Claim
from queueing.listener import CHANNEL_CANCEL, CHANNEL_QUEUED, Listener

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1  # a side task died, or the backend could not load
EXIT_WEDGED = 75  # a pipeline step never returned: the process ends so its GPU is freed

# What says a session is gone (or must be taken for gone: a claim past its deadline).
# A worker whose GPU another live worker also names waits this long after a job before it
# claims again (_let_others_claim): GPU jobs take seconds, so the turn costs the GPU little.
SHARED_GPU_YIELD_S = 0.05

SESSION_LOST = (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError)


@dataclass(frozen=True)
class WorkerConfig:
    """The worker's knobs: Settings' (whose defaults they take) plus a few only the worker has."""

    poll_interval_s: float = Settings.poll_interval_s
    sweep_interval_s: float = Settings.sweep_interval_s
    lock_warn_s: float = Settings.lock_warn_s
    grace_s: float = Settings.grace_s
    backoff: Backoff = field(default_factory=Backoff)
    probe_interval_s: float = 0.25
    # A real model's step or VAE decode on a CPU can take seconds: only a step that has not
    # returned this long after its job was interrupted counts as wedged.
    stuck_grace_s: float = Settings.stuck_grace_s
    progress_interval_s: float = 0.1
    reconnect_max_s: float = 2.0
    # The session's claim, release and probe never wait for a lock, so a round trip slower than
    # this means the session (or its host's network) is gone.
    session_deadline_s: float = 5.0
    gpu_lock_dir: Path = field(default_factory=default_gpu_lock_dir)
    max_batch: int = 1  # run_worker sets the backend's default (backends.default_max_batch)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        return cls(
            poll_interval_s=settings.poll_interval_s,
            sweep_interval_s=settings.sweep_interval_s,
            lock_warn_s=settings.lock_warn_s,
            grace_s=settings.grace_s,
            backoff=Backoff(settings.retry_base_s, settings.retry_cap_s),
            stuck_grace_s=settings.stuck_grace_s,
            gpu_lock_dir=settings.gpu_lock_dir,
            max_batch=settings.max_batch or 1,
        )


class SessionGivenUp(psycopg.OperationalError):
    """A job's end could not be written at all: the session is dropped as if it were lost."""


@dataclass(frozen=True)
class _Ending:
    """How one outcome is recorded: the transition to call (None: nothing may be written), whether
    the job is finished by it (not handed back), and the log line from the transition's answer."""

    write: Callable[[], Awaitable[Any]] | None
    done: bool
    log: Callable[[Any], None]


@dataclass
class _Running:
    """The running job, or each job of the running batch, by job id."""

    gates: dict[str, StepGate]


def _hard_exit(code: int) -> NoReturn:
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


class Worker:
    """One process, one GPU (host and device), one job at a time."""

    def __init__(
        self,
        url: str,
        *,
        device: str,
        backend: Backend,
        backend_name: str,
        host: str | None = None,
        model: str = BUILTIN_MODEL,
        config: WorkerConfig | None = None,
        hard_exit: Callable[[int], NoReturn] = _hard_exit,
    ) -> None:
        """`host` names this machine in GPU names (--host-id); None: its hostname."""
        self.url = url
        self.host = host or socket.gethostname()
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
        self._device_lock: DeviceLock | None = None
        self._watchdog = LockWatchdog(self.config.lock_warn_s)
        self._shared = False  # another live worker names this GPU (_may_hand_off)
        self._shared_read_at = -float("inf")
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
        self._wake.set()  # a wait for the device lock ends too
        if self._running is not None:
            for gate in self._running.gates.values():
                gate.stop_by(self._stop_at)

    # -- the whole life -------------------------------------------------------------------

    async def run(self) -> int:
        """Load the backend, then work until stopped. Returns the process exit code."""
        logged_as = log_context.bind(host=self.host, device=self.device, model=self.model)
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gpuqueue-pipeline")
        pool = db.make_pool(self.url, "gpuqueue-worker-pool", min_size=1, max_size=4)
        await pool.open(wait=False)
        listener = Listener(
            self.url,
            (CHANNEL_QUEUED, CHANNEL_CANCEL, CHANNEL_GPU),
            self._on_notify,
            on_connect=self._wake.set,
            app="gpuqueue-worker-listen",
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
                    log.error(
                        "the %s task ended unexpectedly; stopping", task.get_name(), exc_info=exc
                    )
                code = EXIT_FAILED
                self.request_stop(immediately=True)  # no grace: the worker is unsound
            code = max(code, await main)
        finally:
            await cancel_and_wait([*side, main])
            await pool.close()
            # Not cancel_futures: a pending device-lock release must run once the pipeline ends.
            executor.shutdown(wait=False)
            log_context.unbind(logged_as)
        return code

    async def _work(self, executor: concurrent.futures.ThreadPoolExecutor, pool: db.Pool) -> int:
        if not await self._load(executor):
            return EXIT_FAILED
        if self._stopping.is_set():
            return EXIT_OK
        runner = JobRunner(
            self.backend,
            executor,
            pool,
            probe_interval_s=self.config.probe_interval_s,
            stuck_grace_s=self.config.stuck_grace_s,
            progress_interval_s=self.config.progress_interval_s,
        )
        # Claimed with the last job's completion, the device lock kept: run before anything else
        # (also when a stop came meanwhile: they are ours, and their gates know the stop).
        handed: list[Claim] = []
        try:
            while handed or not self._stopping.is_set():
                session = self._session or await self._connect()
                if session is None:
                    break
                device_lock = self._device_lock_of(session, executor)
                claims, handed = handed, []
                if not claims:
                    if not await device_lock.acquire(self._stopping, self._wake):
                        break
                    self._wake.clear()
                    try:
                        claims = await session.claim_batch(self.config.max_batch)
                    except SESSION_LOST as exc:
                        device_lock.release()
                        await self._lost(session, pool, f"while claiming ({error_message(exc)})")
                        continue
                    except (psycopg.Error, QueueError) as exc:
                        device_lock.release()
                        await self._claim_failed(session, pool, exc)
                        continue
                    if not claims:  # the GPU is busy, or nothing is runnable
                        device_lock.release()
                        await self._idle()
                        continue
                if len(claims) == 1:
                    handoff = await self._process(session, claims[0], device_lock, runner, pool)
                else:
                    handoff = await self._process_batch(session, claims, device_lock, runner, pool)
                if handoff is not None:
                    handed = await self._handed_over(handoff, device_lock)
                elif self._shared:
                    await self._let_others_claim()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None
            if self._device_lock is not None:
                self._device_lock.close()
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
                    self.url,
                    host=self.host,
                    device=self.device,
                    backend=self.backend_name,
                    model=self.model,
                    deadline_s=self.config.session_deadline_s,
                    # The diffusers backend describes its loaded model; the stub does not.
                    capabilities=getattr(self.backend, "capabilities", None),
                )
            except psycopg.OperationalError as exc:
                log.warning("cannot open the worker session (%s); retrying in %.2f s", exc, backoff)
                await self._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_s)
                continue
            self._session = session
            self.sessions += 1
            log_context.bind(worker_id=session.worker_id)  # this task's lines from now on
            log.info(
                "worker %s registered on GPU %s (host %s, device %s; backend %s, session pid %d)",
                session.worker_id,
                session.gpu_lock,
                self.host,
                self.device,
                self.backend_name,
                session.backend_pid,
            )
            return session
        return None

    def _device_lock_of(
        self, session: GpuSession, executor: concurrent.futures.ThreadPoolExecutor
    ) -> DeviceLock:
        """This GPU's OS-level lock, named like its database lock (the same for every session)."""
        if self._device_lock is None:
            self._device_lock = DeviceLock(self.config.gpu_lock_dir, session.gpu_lock, executor)
        return self._device_lock

    async def _may_hand_off(self, session: GpuSession, device_lock: DeviceLock) -> bool:
        """Whether a completion may carry the next claim: not when stopping, nor when another
        process waits for this GPU (it gets the GPU between jobs, as before): on this host's
        lock files, or, read again every poll interval, as another live worker of the same
        GPU name (one with lock files of its own waits only for the database's lock)."""
        if self._stopping.is_set() or device_lock.awaited():
            return False
        now = time.monotonic()
        if now >= self._shared_read_at + self.config.poll_interval_s:
            self._shared = await session.gpu_shared()
            self._shared_read_at = now
        return not self._shared

    async def _let_others_claim(self) -> None:
        """Another live worker names this GPU: it was woken by our release (NOTIFY gq_gpu) and
        claims in a round trip; give it that long before claiming again, or the worker that
        just finished would win every time and the other never run a job (they take turns)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHARED_GPU_YIELD_S):
                await self._stopping.wait()

    async def _handed_over(self, handoff: Handoff, device_lock: DeviceLock) -> list[Claim]:
        """The claims a completion brought back, to run next with the device lock still held;
        without any, the idle wait that follows a claim of the loop's own that found none."""
        if handoff.claims:
            return handoff.claims
        device_lock.release()
        await self._idle()
        return []

    async def _claim_failed(self, session: GpuSession, pool: db.Pool, exc: Exception) -> None:
        """A claim the database refused (not a lost session): free the GPU lock it may have
        taken, which outlives the rollback, and try again after a poll interval."""
        log.error(
            "the claim on GPU %s failed (%s); the GPU lock is released and the worker tries "
            "again in %g s",
            session.gpu_lock,
            error_message(exc),
            self.config.poll_interval_s,
            exc_info=exc,
        )
        try:
            await session.release_gpu()
        except SESSION_LOST as lost:
            await self._lost(session, pool, f"while releasing the GPU lock ({error_message(lost)})")
            return
        await self._sleep_unless_stopping(self.config.poll_interval_s)

    async def _lost(self, session: GpuSession, pool: db.Pool, context: str) -> None:
        """The session died: its GPU lock and worker id are gone. Come back as a new worker."""
        log.warning(
            "worker %s lost its session %s; its job (if any) is left to the sweep; "
            "reconnecting as a new worker",
            session.worker_id,
            context,
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

    # -- one job --------------------------------------------------------------------------

    async def _process(
        self,
        session: GpuSession,
        claim: Claim,
        device_lock: DeviceLock,
        runner: JobRunner,
        pool: db.Pool,
    ) -> Handoff | None:
        """Run one claimed job and record its end; the Handoff when the end carried the next
        claim. The device lock is released only once the pipeline has stopped, also when the
        session was lost meanwhile, and kept when the hand-off brought the next jobs."""
        gate = StepGate(timeout_s=claim.timeout_s)
        if self._stop_at is not None:
            gate.stop_by(self._stop_at)
        self._running = _Running({str(claim.job_id): gate})
        self._watchdog.held(claim)
        logged_as = log_context.bind(job_id=claim.job_id)
        log.debug(
            "job %s: processing on GPU %s (attempt %d of %d, timeout %d s)",
            claim.job_id,
            claim.gpu_lock,
            claim.attempts,
            claim.max_attempts,
            claim.timeout_s,
        )
        handoff: Handoff | None = None
        try:
            try:
                result = await runner.run(claim, gate, session.probe)
            except BaseException:
                gate.flag(Reason.LOST)  # whatever went wrong here, the pipeline thread stops
                device_lock.release_when_idle()  # ... and the GPU stays ours until it has
                raise
            if result.wedged:
                device_lock.release_when_idle()  # never, unless the step returns after all
                await self._give_up(session, [(claim, result)])
            if result.reason is Reason.LOST:
                await self._lost(session, pool, f"while job {claim.job_id} ran")
                return None
            try:
                handoff = await self._end(session, [(claim, result)], device_lock)
            except SESSION_LOST as exc:
                await self._lost(session, pool, f"while ending job {claim.job_id} ({exc})")
        finally:
            log_context.unbind(logged_as)
            self._watchdog.released()
            self._running = None
            if handoff is None or not handoff.claims:
                device_lock.release()  # the pipeline has stopped (or the release waits for it)
        return handoff

    async def _end(
        self, session: GpuSession, ends: list[tuple[Claim, RunResult]], device_lock: DeviceLock
    ) -> Handoff | None:
        """Write the ends in order, the last one releasing the GPU lock. When they are all
        completions they are written in one statement, and when the GPU may stay with this
        worker they go with the next claim in the same round trip and commit (the Handoff);
        when the database refuses that, each is written the usual way (so a refused image fails
        its job alone) and None is returned, as when they are written one by one."""
        completions = [(c, r.png) for c, r in ends if r.reason is None and r.png is not None]
        if len(completions) == len(ends):
            stored: list[bool] = []
            handoff: Handoff | None = None
            if await self._may_hand_off(session, device_lock):
                self._wake.clear()  # as before a claim: a NOTIFY from now on is news
                handoff = await session.complete_and_claim(completions, self.config.max_batch)
                stored = handoff.stored
            elif len(completions) > 1:
                stored = await self._complete_batch(session, completions)
            if stored:
                for (claim, result), done in zip(ends, stored, strict=True):
                    self._ended(claim, self._ending(session, claim, result), done)
                return handoff
        for index, (claim, result) in enumerate(ends):
            await self._record(session, claim, result, release=index == len(ends) - 1)
        return None

    async def _complete_batch(
        self, session: GpuSession, completions: list[tuple[Claim, bytes]]
    ) -> list[bool]:
        """A batch's completions in one statement; [] when the database refuses it (nothing was
        written: the caller writes each alone, so a refused image fails its job alone)."""
        try:
            return await session.complete_batch(completions)
        except psycopg.OperationalError:
            raise
        except Exception as exc:
            log.info("the batch's completion was refused (%s); its jobs end one by one", exc)
            return []

    async def _record(
        self, session: GpuSession, claim: Claim, result: RunResult, *, release: bool = True
    ) -> None:
        """Write the job's end and release the GPU lock, in one round trip.

        What the database refuses for this one job (an image it will not store, any other error
        that is not a lost connection) fails the job with the reason, and the worker goes on.
        When not even that can be written, the session is given up (SessionGivenUp): its end
        frees the GPU lock and the sweep takes the job back.
        """
        try:
            await self._write_end(session, claim, result, release=release)
        except psycopg.OperationalError:
            raise
        except Exception as exc:
            log.error(
                "job %s: its end could not be recorded (%s); failing it",
                claim.job_id,
                exc,
                exc_info=True,
            )
            stored = "image" if result.png is not None else "end"
            what = f"the job's {stored} could not be stored"
            try:
                await session.fail(
                    claim,
                    f"{what}: {error_message(exc)}",
                    retryable=False,
                    backoff=self.config.backoff,
                    release=release,
                )
            except psycopg.OperationalError:
                raise
            except Exception as again:
                raise SessionGivenUp(
                    f"job {claim.job_id}: not even its failure could be written ({again})"
                ) from again
            self.jobs_done += 1

    async def _write_end(
        self, session: GpuSession, claim: Claim, result: RunResult, *, release: bool = True
    ) -> None:
        ending = self._ending(session, claim, result, release=release)
        assert ending.write is not None  # a lost session was dealt with before
        self._ended(claim, ending, await ending.write())

    def _ended(self, claim: Claim, ending: _Ending, answer: Any) -> None:
        """Count an end the database took and log it (`answer` being its transition's) when the
        loop next waits: after the next job has started, so that the line is written while the
        GPU works, not while it idles between jobs (a tenth of a no-op job's time)."""
        if ending.done:
            self.jobs_done += 1
        with log_context.bound(job_id=claim.job_id):  # also a batch member's line
            context = contextvars.copy_context()
        asyncio.get_running_loop().call_soon(ending.log, answer, context=context)

    def _ending(
        self, session: GpuSession, claim: Claim, result: RunResult, *, release: bool = True
    ) -> _Ending:
        """Each outcome's transition and log line, the one place that maps one to the other.

        Used by the normal end and by the last resort alike; a wedged run's timeout says that
        its worker was restarted.
        """
        job, reason, backoff = claim.job_id, result.reason, self.config.backoff
        if reason is None and result.png is not None:
            image = result.png
            return _Ending(
                lambda: session.complete(claim, image, release=release),
                True,
                lambda stored: log.info(
                    "job %s: complete in %.2f s%s",
                    job,
                    result.elapsed_s,
                    "" if stored else " (claim was stale: result discarded)",
                ),
            )
        if reason is None:
            error = result.error or "the pipeline failed"
            return _Ending(
                lambda: session.fail(
                    claim, error, retryable=result.retryable, backoff=backoff, release=release
                ),
                True,
                lambda status: log.warning(
                    "job %s: the pipeline failed after %.2f s (attempt %d of %d); now %s: %s",
                    job,
                    result.elapsed_s,
                    claim.attempts,
                    claim.max_attempts,
                    status or "stale",
                    error,
                    exc_info=result.exception,
                ),
            )
        if reason is Reason.TIMEOUT:
            message = timeout_message(result.elapsed_s, claim.timeout_s)
            stored = (
                f"{message}; the step never returned, so its worker was restarted"
                if result.wedged
                else message
            )
            return _Ending(
                lambda: session.fail(
                    claim, stored, retryable=False, backoff=backoff, release=release
                ),
                True,
                lambda _: log.warning("job %s: %s", job, message),
            )
        if reason is Reason.CANCEL:
            return _Ending(
                lambda: session.finish_canceled(claim, release=release),
                True,
                lambda _: log.info("job %s: canceled after %.2f s", job, result.elapsed_s),
            )
        if reason is Reason.STOP:
            return _Ending(
                lambda: session.requeue(claim, release=release),
                False,
                lambda status: log.info(
                    "job %s: handed back to the queue (%s) because the worker is stopping",
                    job,
                    status or "stale",
                ),
            )
        if reason is Reason.STALE:  # the job is no longer ours; this only releases the GPU lock
            return _Ending(
                lambda: session.requeue(claim, release=release),
                False,
                lambda _: log.warning(
                    "job %s: the claim went stale while it ran; result discarded", job
                ),
            )
        return _Ending(None, False, lambda _: None)  # LOST: the session is gone, write nothing

    async def _give_up(self, session: GpuSession, ends: list[tuple[Claim, RunResult]]) -> NoReturn:
        """Last resort: a step never returned after the job (or batch) was interrupted.

        The thread cannot be killed, and the GPU may be wedged with it, so the jobs' ends are
        written and the process exits: its session closes, the GPU lock is freed, and the
        supervisor starts a fresh worker.
        """
        claim, result = ends[0]
        reason = result.reason
        log.error(
            "job %s: a pipeline step has not returned %.0f s after the job was interrupted (%s); "
            "ending this worker process (exit %d) so that the GPU is freed",
            claim.job_id,
            self.config.stuck_grace_s,
            reason.value if reason else "?",
            EXIT_WEDGED,
        )
        try:
            async with asyncio.timeout(5.0):
                for claim, result in ends:
                    ending = self._ending(session, claim, result)
                    if ending.write is not None:
                        await ending.write()
                if any(self._ending(session, c, r).write is not None for c, r in ends):
                    await workers.mark_stopped(session.conn, session.worker_id)
        except Exception as exc:
            log.error("job %s: could not record its end (%s); the sweep will", claim.job_id, exc)
        self._hard_exit(EXIT_WEDGED)

    # -- a batch (contract: Batching) -----------------------------------------------------

    async def _process_batch(
        self,
        session: GpuSession,
        claims: list[Claim],
        device_lock: DeviceLock,
        runner: JobRunner,
        pool: db.Pool,
    ) -> Handoff | None:
        """Run claims as one pipeline call; each member ends in its own transition, and the
        GPU lock is released with the last end, once the pipeline has stopped (the last end may
        carry the next claim, as _process's does)."""
        gates = [StepGate(timeout_s=claim.timeout_s) for claim in claims]
        if self._stop_at is not None:
            for gate in gates:
                gate.stop_by(self._stop_at)
        self._running = _Running({str(c.job_id): g for c, g in zip(claims, gates, strict=True)})
        self._watchdog.held(claims[0])
        lost: list[str] = []
        handoff: Handoff | None = None
        log.debug(
            "batch of %d job(s) processing on GPU %s: %s",
            len(claims),
            claims[0].gpu_lock,
            ", ".join(str(c.job_id) for c in claims),
        )

        async def end_alone(claim: Claim, result: RunResult) -> None:
            if lost:
                return
            try:
                await self._record(session, claim, result, release=False)
            except psycopg.OperationalError as exc:
                lost.append(f"while ending job {claim.job_id} ({exc})")
                for gate in gates:
                    gate.flag(Reason.LOST)  # the pipeline stops; nothing more is written

        try:
            try:
                ends = await runner.run_batch(claims, gates, session.probe, end_alone)
            except BaseException:
                for gate in gates:
                    gate.flag(Reason.LOST)
                device_lock.release_when_idle()
                raise
            if any(result.wedged for _, result in ends):
                device_lock.release_when_idle()
                await self._give_up(session, ends)
            if lost or any(result.reason is Reason.LOST for _, result in ends):
                await self._lost(session, pool, lost[0] if lost else "while a batch ran")
                return None
            if not ends:  # every end was written alone: none of them released the GPU lock
                try:
                    await session.release_gpu()
                except SESSION_LOST as exc:
                    await self._lost(session, pool, f"while releasing the GPU lock ({exc})")
                return None
            try:
                handoff = await self._end(session, ends, device_lock)
            except SESSION_LOST as exc:
                await self._lost(session, pool, f"while ending the batch's jobs ({exc})")
                return None
        finally:
            self._watchdog.released()
            self._running = None
            if handoff is None or not handoff.claims:
                device_lock.release()
        return handoff

    # -- side tasks -----------------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CHANNEL_CANCEL:
            running = self._running
            gate = None if running is None else running.gates.get(payload)
            if gate is not None:
                log.info("job %s: cancel requested", payload, extra={"job_id": payload})
                gate.flag(Reason.CANCEL)
        elif (channel == CHANNEL_QUEUED and payload == self.model) or (
            channel == CHANNEL_GPU
            and self._device_lock is not None
            and payload == self._device_lock.gpu
        ):
            self._wake.set()

    async def _sweep_forever(self, pool: db.Pool) -> None:
        """Crash recovery (see Sweeper): it never ends on its own, whatever a sweep raises."""
        await Sweeper(pool, self.config.sweep_interval_s).run()


def timeout_message(elapsed_s: float, timeout_s: int) -> str:
    """The error a user sees for a job past its deadline (R6.1, R6.3)."""
    return f"timed out after {elapsed_s:.1f} s (timeout_s={timeout_s})"
