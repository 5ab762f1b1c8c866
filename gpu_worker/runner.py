"""Runs one claimed job: the pipeline in a thread, the event loop watching over it.

The pipeline cannot be interrupted from outside, so everything that must stop a job (its
deadline, a cancel, a lost session, a stop past the grace period) is checked by the step
callback, in the pipeline thread, at each step boundary: it raises `Interrupted`. The loop side
probes the session meanwhile and notices a step that never returns (`RunResult.wedged`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import enum
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gpu_worker import png
from gpu_worker.backends import Backend, ImageRequest
from queueing import db, jobs, limits
from queueing.config import Settings
from queueing.jobs import Claim

log = logging.getLogger(__name__)

# What a pipeline call raises for arguments it can never accept (a family that wants another
# argument, a value it refuses, a None it dereferences): the same request fails the same way on
# every attempt, so the job fails at once instead of being retried.
NOT_RETRYABLE = (TypeError, ValueError, AttributeError)

Clock = Callable[[], float]
T = TypeVar("T")
Probe = Callable[[Claim], Awaitable[tuple[bool, bool]]]


class Reason(enum.Enum):
    """Why a running job must stop, most binding first (see StepGate.reason)."""

    LOST = "lost"  # the worker's session died: its GPU lock and identity are gone; write nothing
    STALE = "stale"  # the claim is no longer current (someone else ended or requeued the job)
    CANCEL = "cancel"  # the user asked for it
    TIMEOUT = "timeout"  # started + timeout_s has passed
    STOP = "stop"  # the worker is stopping and the grace period is over


class Interrupted(Exception):
    """Raised by the step callback, inside the pipeline thread, to end the run at a step."""

    def __init__(self, reason: Reason, elapsed_s: float) -> None:
        super().__init__(f"{reason.value} after {elapsed_s:.1f} s")
        self.reason = reason
        self.elapsed_s = elapsed_s


class StepGate:
    """What the step callback consults. Written from the loop, read from the pipeline thread.

    Flags are only ever added (a dict insert is atomic under the GIL), so the thread needs no lock.
    """

    def __init__(self, *, timeout_s: float, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.deadline = self.started + timeout_s
        self.stop_at: float | None = None
        self._flags: dict[Reason, float] = {}

    def flag(self, reason: Reason) -> None:
        """Mark a reason (LOST, STALE, CANCEL) as due from now on; the first time counts."""
        self._flags.setdefault(reason, self._clock())

    def flagged(self, reason: Reason) -> bool:
        return reason in self._flags

    def stop_by(self, when: float) -> None:
        """The job must be interrupted at `when` (monotonic) because the worker is stopping."""
        self.stop_at = when if self.stop_at is None else min(self.stop_at, when)

    def elapsed(self) -> float:
        return self._clock() - self.started

    def due(self, now: float | None = None) -> tuple[Reason, float] | None:
        """The most binding reason to stop that is due now, and since when it has been due."""
        now = self._clock() if now is None else now
        for reason in (Reason.LOST, Reason.STALE, Reason.CANCEL):
            if reason in self._flags:
                return reason, self._flags[reason]
        if now >= self.deadline:
            return Reason.TIMEOUT, self.deadline
        if self.stop_at is not None and now >= self.stop_at:
            return Reason.STOP, self.stop_at
        return None

    def reason(self) -> Reason | None:
        due = self.due()
        return None if due is None else due[0]

    def check(self) -> None:
        """Raise Interrupted when the job must stop; called at every step boundary."""
        reason = self.reason()
        if reason is not None:
            raise Interrupted(reason, self.elapsed())


class ProgressReporter:
    """The step callback: checks the gate, then reports progress at most every `interval_s`.

    Reports are scheduled onto the event loop and never awaited by the pipeline thread; while one
    is in flight, later steps are not reported (they coalesce into the next one). Nothing is
    reported in the first `interval_s`, so a job that short costs the database nothing extra.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: db.Pool,
        claim: Claim,
        gate: StepGate,
        *,
        interval_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._loop = loop
        self._pool = pool
        self._claim = claim
        self._gate = gate
        self._interval_s = interval_s
        self._clock = clock
        self._last = gate.started
        self._inflight: concurrent.futures.Future[None] | None = None
        self._preview: bytes | None = None  # the latest, sent with the next report
        self.reported = 0

    def on_step(self, step: int, steps: int) -> None:
        self._gate.check()
        self.report(step, steps)

    def report(self, step: int, steps: int) -> None:
        """Report the step without checking the gate (a batch checks its members itself)."""
        now = self._clock()
        if now - self._last < self._interval_s:
            return
        if self._inflight is not None and not self._inflight.done():
            return
        self._last = now
        self.reported += 1
        preview, self._preview = self._preview, None
        self._inflight = asyncio.run_coroutine_threadsafe(
            self._report(step, steps, preview), self._loop
        )

    def preview(self, _index: int, image: bytes) -> None:
        """The backend's on_preview (from the pipeline thread): kept for the next report."""
        self._preview = image

    async def _report(self, step: int, steps: int, preview: bytes | None) -> None:
        try:
            cancel = await jobs.report_progress(self._pool, self._claim, step, steps, preview)
        except Exception as exc:  # progress is best effort; the probe watches the session
            log.warning("job %s: progress not stored (%s)", self._claim.job_id, exc)
            return
        if cancel is None:
            self._gate.flag(Reason.STALE)
        elif cancel:
            self._gate.flag(Reason.CANCEL)


@dataclass(frozen=True)
class RunResult:
    """How a run ended. `reason` None means the pipeline returned (png) or raised (error)."""

    reason: Reason | None
    elapsed_s: float
    png: bytes | None = None
    error: str | None = None
    retryable: bool = True
    wedged: bool = False
    exception: BaseException | None = None


Ends = list[tuple[Claim, RunResult]]
"""Members' ends still to be written, in order; the last one written releases the GPU lock."""
EndAlone = Callable[[Claim, RunResult], Awaitable[None]]
"""Writes one member's end while the batch's GPU lock stays held (never the last end)."""

# What stops a batch's whole call: the session is gone, or the worker is stopping. A member's
# own reasons (stale, cancel, timeout) end that member alone.
WHOLE_CALL = (Reason.LOST, Reason.STOP)


@dataclass
class Member:
    """One job of a batch as its run follows it. `stopped` is set once, by the pipeline thread
    or the loop (whichever sees the member's reason first); `ended`: its end was written."""

    claim: Claim
    request: ImageRequest
    gate: StepGate
    reporter: ProgressReporter
    stopped: Interrupted | None = None
    stopped_at: float = 0.0
    ended: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self, reason: Reason) -> bool:
        with self._lock:
            if self.stopped is not None:
                return False
            self.stopped = Interrupted(reason, self.gate.elapsed())
            self.stopped_at = time.monotonic()
            return True

    @property
    def live(self) -> bool:
        return self.stopped is None


def image_request(claim: Claim) -> ImageRequest:
    """The backend's request from the job's params (the web layer fills every field in)."""
    params: dict[str, Any] = claim.params or {}
    negative = params.get("negative_prompt")
    return ImageRequest(
        prompt=claim.prompt,
        negative_prompt=str(negative) if negative else None,
        width=int(params.get("width", Settings.default_size)),
        height=int(params.get("height", Settings.default_size)),
        steps=int(params.get("steps", limits.DEFAULT_STEPS)),
        guidance_scale=float(params.get("guidance_scale", limits.DEFAULT_GUIDANCE_SCALE)),
        seed=int(params.get("seed", 0)),
        work=claim.work,
    )


def error_message(exc: BaseException) -> str:
    """What the user sees for a pipeline exception: its message, or its type when it has none."""
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _interrupt_in_chain(exc: BaseException) -> Interrupted | None:
    """A backend may wrap our Interrupted in its own exception; find it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Interrupted):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _request_of(claim: Claim) -> ImageRequest | RunResult:
    """The claim's request, or the result that fails this job alone: whatever is wrong with a
    job's params fails that job only."""
    try:
        return image_request(claim)
    except Exception as exc:
        return RunResult(None, 0.0, error=f"invalid job parameters: {exc}", retryable=False)


class JobRunner:
    """Runs jobs one at a time on a backend, in the one pipeline thread of `executor`."""

    def __init__(
        self,
        backend: Backend,
        executor: concurrent.futures.ThreadPoolExecutor,
        pool: db.Pool,
        *,
        probe_interval_s: float,
        stuck_grace_s: float,
        progress_interval_s: float,
    ) -> None:
        """The intervals are WorkerConfig's (their one default is there)."""
        self._backend = backend
        self._executor = executor
        self._pool = pool
        self._probe_interval_s = probe_interval_s
        self._stuck_grace_s = stuck_grace_s
        self._progress_interval_s = progress_interval_s

    async def run(self, claim: Claim, gate: StepGate, probe: Probe) -> RunResult:
        """Run the claim's pipeline until it returns, raises, or wedges past an interrupt.

        `probe` reads (claim current, cancel requested) over the worker's session every
        probe_interval_s; an error from it, or no answer within the session's deadline
        (TimeoutError), means the session is lost.
        """
        request = _request_of(claim)
        if isinstance(request, RunResult):
            return request
        loop = asyncio.get_running_loop()
        reporter = ProgressReporter(
            loop, self._pool, claim, gate, interval_s=self._progress_interval_s
        )
        future = self._start(
            [request],
            functools.partial(self._backend.generate, request, reporter.on_step, reporter.preview),
        )
        while not future.done():  # an instant call is done already: no wait at all
            await asyncio.wait({future}, timeout=self._probe_interval_s)
            if future.done():
                break
            due = gate.due()
            if due is not None and time.monotonic() - due[1] > self._stuck_grace_s:
                return RunResult(due[0], gate.elapsed(), wedged=True)
            if not gate.flagged(Reason.LOST):
                await self._probe(claim, gate, probe)
        return self._result(future, gate)

    def _start(self, requests: Sequence[ImageRequest], call: Callable[[], T]) -> asyncio.Future[T]:
        """The pipeline call, in the pipeline thread; already done when the backend says it
        returns at once (`runs_instantly`: the stub at zero delay), as the thread hop would
        cost more than the call itself."""
        loop = asyncio.get_running_loop()
        instantly = getattr(self._backend, "runs_instantly", None)
        if instantly is None or not instantly(requests):
            # In a copy of this context: the pipeline's log lines name the job too.
            return loop.run_in_executor(self._executor, contextvars.copy_context().run, call)
        done: asyncio.Future[T] = loop.create_future()
        try:
            done.set_result(call())
        except Exception as exc:
            done.set_exception(exc)
        return done

    async def _probe(self, claim: Claim, gate: StepGate, probe: Probe) -> None:
        try:
            current, cancel = await probe(claim)
        except TimeoutError as exc:
            log.warning(
                "job %s: the worker's session did not answer a probe (%s); taking it as lost",
                claim.job_id,
                exc,
            )
            gate.flag(Reason.LOST)
            return
        except Exception as exc:  # the session's state is unknown: treat it as gone
            log.warning("job %s: the worker's session failed (%s)", claim.job_id, exc)
            gate.flag(Reason.LOST)
            return
        if not current:
            gate.flag(Reason.STALE)
        if cancel:
            gate.flag(Reason.CANCEL)

    def _result(self, future: asyncio.Future[bytes], gate: StepGate) -> RunResult:
        elapsed = gate.elapsed()
        try:
            image = future.result()
        except Exception as exc:
            interrupted = _interrupt_in_chain(exc)
            if interrupted is not None:
                return RunResult(interrupted.reason, interrupted.elapsed_s)
            reason = gate.reason()
            if reason in (Reason.LOST, Reason.STALE, Reason.CANCEL):
                return RunResult(reason, elapsed)
            return RunResult(
                None,
                elapsed,
                error=error_message(exc),
                retryable=not isinstance(exc, NOT_RETRYABLE),
                exception=exc,
            )
        # The image exists: a deadline or a stop that came due after the last step does not
        # waste it. Losing the claim does, and a cancel is the user's explicit wish.
        reason = gate.reason()
        if reason in (Reason.LOST, Reason.STALE, Reason.CANCEL):
            return RunResult(reason, elapsed)
        return _image_result(image, elapsed)

    # -- batches (contract: Batching) -------------------------------------------------------

    async def run_batch(
        self, claims: Sequence[Claim], gates: Sequence[StepGate], probe: Probe, end_alone: EndAlone
    ) -> Ends:
        """Run compatible claims as one pipeline call; each member keeps its own gate.

        A member whose claim goes stale, or that is canceled or times out, leaves the call: its
        end is written at once through `end_alone` (its image, if the call finishes, is
        discarded) while the others go on; when none is left the call is interrupted. A lost
        session or a stop past the grace period interrupts the whole call. A call that raises is
        run again with each remaining member alone, so one bad job fails alone. Returns the ends
        still to write, in order (the last releases the GPU lock); a LOST or wedged end means
        the others are left to the session's end and the sweep.
        """
        loop = asyncio.get_running_loop()
        members: list[Member] = []
        invalid: Ends = []
        for claim, gate in zip(claims, gates, strict=True):
            request = _request_of(claim)
            if isinstance(request, RunResult):
                invalid.append((claim, request))
                continue
            reporter = ProgressReporter(
                loop, self._pool, claim, gate, interval_s=self._progress_interval_s
            )
            members.append(Member(claim, request, gate, reporter))
        if not members:
            return invalid
        for claim, result in invalid:
            await end_alone(claim, result)
        wake = asyncio.Event()

        def on_step(step: int, steps: int) -> None:  # in the pipeline thread
            for member in members:
                due = member.gate.due() if member.live else None
                if due is None:
                    continue
                if due[0] in WHOLE_CALL:
                    raise Interrupted(due[0], member.gate.elapsed())
                if member.stop(due[0]):
                    loop.call_soon_threadsafe(wake.set)
            live = [m for m in members if m.live]
            if not live:
                first = members[0].stopped
                assert first is not None
                raise Interrupted(first.reason, first.elapsed_s)
            for member in live:
                member.reporter.report(step, steps)

        requests = [m.request for m in members]
        future = self._start(
            requests,
            functools.partial(
                self._backend.generate_batch,
                requests,
                on_step,
                lambda index, image: members[index].reporter.preview(index, image),
            ),
        )
        while not future.done():
            woken: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
            waits: set[asyncio.Future[Any]] = {future, woken}
            try:
                await asyncio.wait(
                    waits,
                    timeout=self._probe_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                woken.cancel()
            if future.done():
                break
            wake.clear()
            wedged = self._batch_wedged(members)
            if wedged is not None:
                return [
                    (m.claim, RunResult(wedged, m.gate.elapsed(), wedged=True))
                    for m in members
                    if not m.ended
                ]
            for member in members:
                if member.live and not member.gate.flagged(Reason.LOST):
                    await self._probe(member.claim, member.gate, probe)
                due = member.gate.reason() if member.live else None
                if due is not None and due not in WHOLE_CALL:
                    member.stop(due)
            await self._end_stopped(members, end_alone)
        return await self._batch_result(future, members, probe, end_alone)

    def _batch_wedged(self, members: Sequence[Member]) -> Reason | None:
        """The reason the whole call should have stopped stuck_grace_s ago, if it has not."""
        now = time.monotonic()
        for member in members:
            due = member.gate.due(now)
            if due is not None and due[0] in WHOLE_CALL and now - due[1] > self._stuck_grace_s:
                return due[0]
        if any(m.live for m in members):
            return None
        last = max(m.stopped_at for m in members)
        first = members[0].stopped
        assert first is not None
        return first.reason if now - last > self._stuck_grace_s else None

    async def _end_stopped(self, members: Sequence[Member], end_alone: EndAlone) -> None:
        """Write the end of each stopped member while another one still runs the call (so the
        GPU lock stays held until the pipeline has stopped)."""
        if not any(m.live for m in members):
            return
        for member in members:
            stopped = member.stopped
            if stopped is not None and not member.ended:
                member.ended = True
                await end_alone(member.claim, RunResult(stopped.reason, stopped.elapsed_s))

    async def _batch_result(
        self,
        future: asyncio.Future[list[bytes]],
        members: Sequence[Member],
        probe: Probe,
        end_alone: EndAlone,
    ) -> Ends:
        ends: Ends = []
        retry: list[Member] = []
        try:
            images: list[bytes] | None = future.result()
            failure: BaseException | None = None
        except Exception as exc:
            images, failure = None, exc
        interrupted = None if failure is None else _interrupt_in_chain(failure)
        for index, member in enumerate(members):
            if member.ended:
                continue
            elapsed = member.gate.elapsed()
            reason = member.stopped.reason if member.stopped is not None else member.gate.reason()
            if interrupted is not None:
                ends.append((member.claim, RunResult(reason or interrupted.reason, elapsed)))
            elif reason in (Reason.LOST, Reason.STALE, Reason.CANCEL) or (
                member.stopped is not None
            ):
                ends.append((member.claim, RunResult(reason, elapsed)))
            elif images is None:
                retry.append(member)
            else:
                image = images[index] if index < len(images) else b""
                ends.append((member.claim, _image_result(image, elapsed)))
        if any(result.reason is Reason.LOST for _, result in ends):
            return [(c, r) for c, r in ends if r.reason is Reason.LOST][:1]
        if not retry:
            return ends
        log.warning(
            "a batch of %d job(s) failed (%s); running each of its %d remaining job(s) alone",
            len(members),
            error_message(failure) if failure is not None else "?",
            len(retry),
        )
        for claim, result in ends:
            await end_alone(claim, result)
        for index, member in enumerate(retry):
            result = await self.run(member.claim, member.gate, probe)
            if result.reason is Reason.LOST or result.wedged or index == len(retry) - 1:
                return [(member.claim, result)]
            await end_alone(member.claim, result)
        return []


def _image_result(image: bytes, elapsed: float) -> RunResult:
    """A returned image, checked: an output that is not a PNG fails without a retry (the same
    request would give the same output)."""
    problem = png.problem(image)
    if problem is not None:
        return RunResult(
            None,
            elapsed,
            error=f"the backend's output is not a PNG image: {problem}",
            retryable=False,
        )
    return RunResult(None, elapsed, png=image)
