"""The worker's session: one connection that is both its identity and its GPU's lock.

A GPU is its host and device; its lock is named host/device (gq_gpu_lock_name, migration 003).
The session registers the worker, so the worker is alive exactly while this connection is
(live_workers joins pg_stat_activity). Every call that takes or releases the GPU lock runs here:
the claim takes it when it is free (it never waits in the database, so a waiting worker holds no
snapshot) and each way a job ends releases it in the same round trip (R2.2, R2.3). When the
connection dies, PostgreSQL frees the lock at once and the sweep requeues the job.

The common end, a completion (of one job or of a whole batch, set-based), is sent with the next
claim as one statement (complete_and_claim), so the GPU sits idle for one round trip between
jobs instead of two.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from queueing import db, jobs, workers
from queueing.jobs import Backoff, Claim
from queueing.models import ModelCapabilities
from queueing.states import JobStatus

log = logging.getLogger(__name__)

APP_NAME = "gpuqueue-worker"
CHANNEL_GPU = "gq_gpu"  # payload: a GPU lock's name; gq_release_gpu freed it

T = TypeVar("T")
# Round trips given up on by _within: referenced until they end, so none is collected pending.
_ABANDONED: set[asyncio.Future[Any]] = set()


@dataclass(frozen=True)
class Handoff:
    """Completions and the claim sent with them, committed together or not at all: whether each
    image was stored (False: its claim was stale) and the next claims (none: the GPU is busy or
    nothing is runnable). Nothing committed: no `stored` at all."""

    stored: list[bool]
    claims: list[Claim] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        return bool(self.stored)


class GpuSession:
    """One registered worker on one GPU. A lost connection means a new session, new id."""

    def __init__(
        self, conn: db.Connection, worker_id: UUID, gpu_lock: str, deadline_s: float
    ) -> None:
        """`deadline_s` bounds every round trip that never waits for a lock (claim, release,
        probe): past it the session, or its host's network, is taken for gone."""
        self.conn = conn
        self.worker_id = worker_id
        self.gpu_lock = gpu_lock
        self._deadline_s = deadline_s

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        host: str,
        device: str,
        backend: str,
        model: str,
        deadline_s: float,
        capabilities: ModelCapabilities | None = None,
    ) -> GpuSession:
        """Connect and register a new worker id under this connection (with what its backend
        reports of the model, when it does)."""
        conn = await db.connect(url, APP_NAME)
        worker_id = uuid.uuid4()
        try:
            gpu_lock = await workers.register(
                conn,
                worker_id,
                host=host,
                device=device,
                backend=backend,
                model=model,
                capabilities=capabilities,
            )
        except BaseException:
            await conn.close()
            raise
        return cls(conn, worker_id, gpu_lock, deadline_s)

    @property
    def backend_pid(self) -> int:
        return self.conn.info.backend_pid

    async def claim(self) -> Claim | None:
        """Take the GPU lock if free and claim the next job; None when busy or nothing to run.

        Past deadline_s: TimeoutError, and the caller abandons the session.
        """
        return await _within(self._deadline_s, jobs.lock_and_claim(self.conn, self.worker_id))

    async def claim_batch(self, max_batch: int) -> list[Claim]:
        """Like claim, with up to max_batch - 1 compatible jobs after the head (contract:
        Batching); empty when busy or nothing to run."""
        return await _within(
            self._deadline_s, jobs.lock_and_claim_batch(self.conn, self.worker_id, max_batch)
        )

    async def gpu_shared(self) -> bool:
        """Whether another live worker names this GPU (host and device): one with lock files
        of its own, or on a machine that shares its host id, waits for the database's lock."""
        found = await _within(
            self._deadline_s, db.fetch_value(self.conn, "gpu_shared", {"worker_id": self.worker_id})
        )
        return bool(found)

    async def release_gpu(self) -> None:
        """Free the GPU lock after a claim raised: a session lock survives the rollback."""
        await _within(self._deadline_s, jobs.release_gpu(self.conn, self.gpu_lock))

    async def probe(self, claim: Claim) -> tuple[bool, bool]:
        """(claim still current, cancel requested); raises when the session is gone, and
        TimeoutError past deadline_s (a network that drops packets never answers nor fails)."""
        return await _within(self._deadline_s, jobs.claim_state(self.conn, claim))

    # Each end releases the GPU lock in the same round trip, unless `release` is False: a member
    # of a batch that ends while the others still run the call.

    async def complete(self, claim: Claim, png: bytes, *, release: bool = True) -> bool:
        return await jobs.complete(self.conn, claim, png, release_device=_lock(claim, release))

    async def complete_batch(
        self, completions: Sequence[tuple[Claim, bytes]], *, release: bool = True
    ) -> list[bool]:
        """Complete the claims in one statement, each in its own transition (a batch's ends, when
        the GPU changes hands after them); whether each image was stored."""
        release_device = completions[-1][0].gpu_lock if release else None
        return await jobs.complete_batch(self.conn, completions, release_device=release_device)

    async def complete_and_claim(
        self, completions: Sequence[tuple[Claim, bytes]], max_batch: int
    ) -> Handoff:
        """Complete the claims, releasing the GPU lock after them, and claim the next jobs (as
        claim_batch), in one statement (gq_complete_and_claim): one round trip and one
        transaction. Each completion keeps its own transition and event; one commit covers them
        and the claim.

        When the database refuses any of it (a completion, or the claim), none of it is
        committed and the Handoff says so: the caller writes each completion the usual way,
        and claims the usual way after.
        """
        params = {
            **jobs.completion_params(completions, completions[-1][0].gpu_lock),
            "worker_id": self.worker_id,
            "max_batch": max_batch,
        }
        try:
            found = await db.fetch_all(self.conn, "job_complete_and_claim", params)
        except psycopg.OperationalError:
            raise
        except Exception as exc:  # one statement, rolled back: the session is idle again
            log.info("the hand-off was refused (%s); its jobs end one by one", exc)
            return Handoff([])
        stored = {row["id"] for row in found if row["status"] == JobStatus.COMPLETE}
        return Handoff(
            [claim.job_id in stored for claim, _ in completions],
            [Claim.from_row(row) for row in found if row["status"] == JobStatus.PROCESSING],
        )

    async def fail(
        self, claim: Claim, error: str, *, retryable: bool, backoff: Backoff, release: bool = True
    ) -> str | None:
        return await jobs.fail(
            self.conn,
            claim,
            error,
            retryable=retryable,
            backoff=backoff,
            release_device=_lock(claim, release),
        )

    async def finish_canceled(self, claim: Claim, *, release: bool = True) -> bool:
        return await jobs.finish_canceled(self.conn, claim, release_device=_lock(claim, release))

    async def requeue(self, claim: Claim, *, release: bool = True) -> str | None:
        """Hand the job back (not counted as an attempt); a stale claim only frees the lock."""
        return await jobs.requeue(self.conn, claim, release_device=_lock(claim, release))

    async def close(self) -> None:
        """Mark the worker stopped and close; the session's end frees any lock it still has."""
        try:
            await workers.mark_stopped(self.conn, self.worker_id)
        except psycopg.Error as exc:
            log.warning("could not mark worker %s stopped (%s)", self.worker_id, exc)
        await self.conn.close()

    async def abandon(self) -> None:
        """Drop a session that failed; its worker row stays, dead, and its job gets swept."""
        await self.conn.close()


def _lock(claim: Claim, release: bool) -> str | None:
    return claim.gpu_lock if release else None


async def _within(deadline_s: float, call: Coroutine[Any, Any, T]) -> T:
    """Await `call` for at most deadline_s, then raise TimeoutError at once.

    Not asyncio.timeout: psycopg answers a cancel by cancelling the query on the server and
    waiting for that, up to 10 s more, and the server may be out of reach. The statement is left
    to die with the session, which the caller abandons.
    """
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=deadline_s)
    except BaseException:
        task.cancel()
        raise
    if not done:
        _ABANDONED.add(task)
        task.add_done_callback(_forget)
        task.cancel()
        raise TimeoutError(f"no answer within {deadline_s:g} s")
    return task.result()


def _forget(task: asyncio.Future[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # read, so asyncio does not report it as never retrieved


class LockWatchdog:
    """Warns when the GPU lock is held longer than `warn_s`, and again every `warn_s` after (R2.5).

    A timer on the event loop, armed at the claim and disarmed at the release: it costs nothing
    per job, and it keeps firing even while the pipeline thread computes.
    """

    def __init__(self, warn_s: float) -> None:
        self._warn_s = warn_s
        self._handle: asyncio.TimerHandle | None = None
        self._claim: Claim | None = None
        self._since = 0.0
        self.warnings = 0

    def held(self, claim: Claim) -> None:
        self.released()
        if self._warn_s <= 0:
            return
        self._claim = claim
        self._since = time.monotonic()
        self._arm(1)

    def released(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._claim = None

    def _arm(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(
            loop.time() + self._since + n * self._warn_s - time.monotonic(), self._warn, n
        )

    def _warn(self, n: int) -> None:
        claim = self._claim
        if claim is None:
            return
        self.warnings += 1
        log.warning(
            "GPU lock on %s held for %.1f s by job %s (more than %g s; attempt %d of %d, "
            "timeout_s=%d)",
            claim.gpu_lock,
            time.monotonic() - self._since,
            claim.job_id,
            self._warn_s,
            claim.attempts,
            claim.max_attempts,
            claim.timeout_s,
        )
        self._arm(n + 1)
