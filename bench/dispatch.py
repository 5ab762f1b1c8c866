"""Dispatch and the GPU hand-off gap: no-op jobs through one worker, three ways.

1. queueing directly: a registered worker session calls queueing.jobs.lock_and_claim then
   queueing.jobs.complete(release_device=...) back to back. Each job: the GPU lock taken and
   released, claim and complete with their events (under the event lock), the message metadata
   deep-merged twice, two NOTIFYs, the image stored.
2. the worker's own loop (gpu_worker.worker.Worker with the stub backend at zero delay, run in
   this process so its loop can be timed): the same, plus the runner (the stub's call made on
   the loop, no thread hop, as it returns at once), the listener that the NOTIFYs wake, and its
   logging; each completion goes with the next claim as one statement (gq_complete_and_claim).
3. the ceiling: the same session holding the GPU lock once for the whole run, and one-statement
   CTEs (bench/sql/ceilings.sql: claim_one, complete_one) that write the job, its event, the image
   and the NOTIFY; no plpgsql, no metadata merge, no event lock.

Two spans between jobs:
- the hand-off gap, from complete's round trip returning (its commit done) to the next claim
  returning a job: the claim's round trip, for the loops that send them apart (issue 3's 1 ms);
- the GPU's idle time, from a job's work done to the next job's start, the same span for all
  three: the raw loops' complete and claim, the worker's completion sent with the next claim
  and what its loop does around that round trip (measured at the stub's calls).
The real worker process (`gpuqueue worker`) is measured by the `worker` family.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import env
from bench.env import BenchDb, Context
from bench.png import tiny_png
from bench.queries import BENCH_SQL
from bench.report import Figure, Target, at_most, not_run, ratio_at_least, ratio_at_most
from bench.stats import ms, p50, p99
from queueing import db, jobs, workers
from queueing.config import BUILTIN_MODEL

FAMILY = "dispatch"
CEILING = "raw claim+complete CTE loop, lock held"
PARAMS = {"width": 64, "height": 64, "steps": 1, "seed": 0}
PNG = tiny_png(64, 64)
MODEL = BUILTIN_MODEL  # the model env.seed's jobs name
HOST = "bench-host"  # the host of the GPUs this family's loops register on


@dataclass
class Loop:
    """Dispatch loops of one kind, added up over rounds: rate and the gaps between jobs."""

    jobs: int = 0
    seconds: float = 0.0
    gaps: list[float] = field(default_factory=list)  # complete returned -> next claim returned
    idle: list[float] = field(default_factory=list)  # a job's work done -> the next one's start

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def add(self, other: Loop) -> None:
        self.jobs += other.jobs
        self.seconds += other.seconds
        self.gaps += other.gaps
        self.idle += other.idle


async def _session(bdb: BenchDb, device: str, host: str = HOST) -> tuple[db.Connection, uuid.UUID]:
    conn = await db.connect(bdb.url, "gpuqueue-bench-worker", "-c lock_timeout=0")
    worker_id = uuid.uuid4()
    await workers.register(conn, worker_id, host=host, device=device, backend="bench", model=MODEL)
    return conn, worker_id


async def queueing_loop(bdb: BenchDb, n: int, device: str) -> Loop:
    conn, worker_id = await _session(bdb, device)
    loop = Loop()
    try:
        last_complete: float | None = None
        work_done = 0.0
        started = time.perf_counter()
        while True:
            claim = await jobs.lock_and_claim(conn, worker_id)
            claimed = time.perf_counter()
            if claim is None:
                break
            if last_complete is not None:
                loop.gaps.append(claimed - last_complete)
                loop.idle.append(claimed - work_done)
            work_done = time.perf_counter()  # a no-op job's work ends as it starts
            if not await jobs.complete(conn, claim, PNG, release_device=claim.gpu_lock):
                raise AssertionError("a fresh claim went stale")
            last_complete = time.perf_counter()
            loop.jobs += 1
        loop.seconds = (last_complete or started) - started
    finally:
        await conn.close()
    if loop.jobs != n:
        raise AssertionError(f"the queueing loop ran {loop.jobs} jobs, expected {n}")
    return loop


async def ceiling_loop(bdb: BenchDb, n: int, device: str, host: str = HOST) -> Loop:
    """The raw loop on the GPU (host, device), holding that GPU's lock throughout."""
    conn, worker_id = await _session(bdb, device, host)
    gpu = {"host": host, "device": device}
    loop = Loop()
    claim_sql, complete_sql = BENCH_SQL["claim_one"], BENCH_SQL["complete_one"]
    try:
        await env.execute(conn, "gpu_lock", gpu)
        last_complete: float | None = None
        work_done = 0.0
        started = time.perf_counter()
        while True:
            cur = await conn.execute(
                claim_sql, {"worker_id": worker_id, "device": device, "model": MODEL}
            )
            row = await cur.fetchone()
            claimed = time.perf_counter()
            if row is None:
                break
            if last_complete is not None:
                loop.gaps.append(claimed - last_complete)
                loop.idle.append(claimed - work_done)
            work_done = time.perf_counter()
            cur = await conn.execute(
                complete_sql, {"job_id": row["job_id"], "claim_id": row["claim_id"], "png": PNG}
            )
            if await cur.fetchone() is None:
                raise AssertionError("a fresh raw claim went stale")
            last_complete = time.perf_counter()
            loop.jobs += 1
        loop.seconds = (last_complete or started) - started
        await env.execute(conn, "gpu_unlock", gpu)
    finally:
        await conn.close()
    if loop.jobs != n:
        raise AssertionError(f"the raw loop ran {loop.jobs} jobs, expected {n}")
    return loop


async def worker_loop(bdb: BenchDb, n: int, device: str) -> Loop:
    """The worker's own loop in this process, timed at complete's return and claim's return."""
    from gpu_worker import worker as worker_module
    from gpu_worker.backends.stub import StubBackend

    loop = Loop()
    stamps: dict[str, float] = {}
    finished = asyncio.Event()

    class TimedStub(StubBackend):
        """The GPU's view: from one call's return to the next call's start it sits idle."""

        def generate(self, *args: Any, **kwargs: Any) -> bytes:
            if "work_done" in stamps:
                loop.idle.append(time.perf_counter() - stamps["work_done"])
            try:
                return super().generate(*args, **kwargs)
            finally:
                stamps["work_done"] = time.perf_counter()

    class TimedWorker(worker_module.Worker):
        async def _connect(self) -> Any:
            session = await super()._connect()
            if session is not None:
                complete: Callable[..., Any] = session.complete
                claim: Callable[..., Any] = session.claim_batch
                hand_off: Callable[..., Any] = session.complete_and_claim

                async def timed_claim(max_batch: int) -> Any:
                    got = await claim(max_batch)
                    if got:
                        now = time.perf_counter()
                        stamps.setdefault("first", now)
                        if "complete" in stamps:
                            loop.gaps.append(now - stamps["complete"])
                    return got

                async def timed_complete(*args: Any, **kwargs: Any) -> Any:
                    result = await complete(*args, **kwargs)
                    stamps["complete"] = time.perf_counter()
                    loop.jobs += 1
                    if loop.jobs >= n:
                        finished.set()
                    return result

                async def timed_hand_off(*args: Any, **kwargs: Any) -> Any:
                    # The completions and the next claim share one round trip, their answers
                    # read together: the GPU sits idle for that whole round trip, counted as
                    # the gap (more than the others' gap, which leaves their complete out).
                    sent = time.perf_counter()
                    handoff = await hand_off(*args, **kwargs)
                    stamps["complete"] = now = time.perf_counter()
                    if handoff.claims:
                        stamps.setdefault("first", sent)
                        loop.gaps.append(now - sent)
                    loop.jobs += sum(stored is not None for stored in handoff.stored)
                    if loop.jobs >= n:
                        finished.set()
                    return handoff

                session.complete = timed_complete  # type: ignore[method-assign]
                session.claim_batch = timed_claim  # type: ignore[method-assign]
                session.complete_and_claim = timed_hand_off  # type: ignore[method-assign]
            return session

    worker = TimedWorker(
        bdb.url,
        device=device,
        backend=TimedStub(delay=0.0),
        backend_name="stub",
        config=worker_module.WorkerConfig(),
    )
    quiet = logging.getLogger("gpu_worker")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the process's default handler would print every job
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(max(60.0, n / 20)):
            await finished.wait()
    finally:
        worker.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        quiet.setLevel(level)
    loop.seconds = stamps["complete"] - stamps["first"]
    return loop


async def _fill(bdb: BenchDb, n: int, prompt: str) -> None:
    await env.seed(bdb, n, status="queued", prompt=prompt, params=PARAMS, wake=True)
    await env.vacuum(bdb)


async def run(ctx: Context) -> list[Figure]:
    rounds = 3 if ctx.quick else 4
    n = 150 if ctx.quick else 300
    loops = {"queueing": Loop(), "ceiling": Loop(), "worker": Loop()}
    worker_error = ""
    async with ctx.database(FAMILY) as bdb:
        await _fill(bdb, 100, "warm")  # plans and caches warm before anything is timed
        await queueing_loop(bdb, 100, "bench-gpu")
        # Many short rounds, the variants taking turns: drift on a shared machine then hits
        # every variant alike, and the rates are sums over the rounds.
        for rnd in range(rounds):
            for name in ("queueing", "ceiling", "worker"):
                if name == "worker" and worker_error:
                    continue
                await _fill(bdb, n, f"{name}-{rnd}")
                try:
                    if name == "queueing":
                        got = await queueing_loop(bdb, n, "bench-gpu")
                    elif name == "ceiling":
                        got = await ceiling_loop(bdb, n, "bench-gpu")
                    else:
                        got = await worker_loop(bdb, n, f"bench-worker-{rnd}")
                except Exception as exc:
                    if name != "worker":
                        raise
                    worker_error = f"{type(exc).__name__}: {exc}"
                    env.log(f"dispatch: the worker's loop failed: {worker_error}")
                    await _drain(bdb)
                    continue
                loops[name].add(got)
    ceiling, queue, worker = loops["ceiling"], loops["queueing"], loops["worker"]
    at = f"{rounds} x {n:,} jobs"
    figures = [
        Figure(
            FAMILY,
            "dispatch no-op jobs, one worker: queueing.jobs directly",
            at,
            "jobs/s",
            queue.rate,
            ceiling.rate,
            CEILING,
            (ratio_at_least(0.7),),
            "claim + complete per job: GPU lock taken and released, events, metadata merge, "
            "NOTIFY, image; rounds interleaved with the ceiling's",
        ),
    ]
    figures += _gaps("queueing.jobs loop", queue, ceiling, at)
    figures += _idle("queueing.jobs loop", "its claim", queue, ceiling, at)
    if worker.jobs:
        figures.append(
            Figure(
                FAMILY,
                "dispatch no-op jobs: the worker's loop (in-process)",
                at,
                "jobs/s",
                worker.rate,
                ceiling.rate,
                CEILING,
                (),
                "gpu_worker Worker + stub backend (0 s), run in the bench process to time "
                "its loop; the process figure is in the worker family",
            )
        )
        figures += _idle(
            "the worker's loop",
            "the completion and the next claim, in one",
            worker,
            ceiling,
            at,
            (ratio_at_most(1.2),),
        )
    else:
        figures.append(not_run(FAMILY, "GPU idle between jobs: the worker's loop", worker_error))
    return figures


async def _drain(bdb: BenchDb) -> None:
    conn = await bdb.connect()
    try:
        await env.execute(conn, "cancel_queued")
    finally:
        await conn.close()


def _idle(
    label: str,
    round_trip: str,
    ours: Loop,
    ceiling: Loop,
    at: str,
    targets: tuple[Target, ...] = (),
) -> list[Figure]:
    """The GPU idle between two jobs, the same span for every loop: from a job's work done (the
    backend's return; for the raw loops, the moment before its complete is sent) to the next
    job's start. The ceiling's idle is its complete and its claim, the worker's its hand-off."""
    note = (
        f"work done → the next job's work started, {len(ours.idle):,} hand-offs; round trip "
        f"p50 of ours ({round_trip}) {ms(p50(ours.gaps)):.3g} ms, of the ceiling's claim "
        f"{ms(p50(ceiling.gaps)):.3g} ms"
    )
    return _spans("GPU idle between jobs", label, ours.idle, ceiling.idle, at, note, targets)


def _gaps(label: str, ours: Loop, ceiling: Loop, at: str) -> list[Figure]:
    note = f"complete returned → next claim returned, {len(ours.gaps):,} hand-offs"
    return _spans(
        "GPU hand-off gap", label, ours.gaps, ceiling.gaps, at, note, (at_most(1.0, "ms"),)
    )


def _spans(
    what: str,
    label: str,
    ours: list[float],
    ceiling: list[float],
    at: str,
    note: str,
    targets: tuple[Target, ...],
) -> list[Figure]:
    """A span's p50 (which `targets` judge) and p99, ours beside the ceiling's, in ms."""
    return [
        Figure(
            FAMILY,
            f"{what} p{q}: {label}",
            at,
            "ms",
            ms(pick(ours)),
            ms(pick(ceiling)),
            CEILING,
            targets if q == 50 else (),
            note,
        )
        for q, pick in ((50, p50), (99, p99))
    ]
