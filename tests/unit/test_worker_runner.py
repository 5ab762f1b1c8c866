"""The worker's pure parts: the step gate, request building, messages, the lock watchdog."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from gpu_worker.backends.stub import StubBackend
from gpu_worker.gpu_lock import LockWatchdog
from gpu_worker.runner import (
    Interrupted,
    JobRunner,
    Reason,
    StepGate,
    _interrupt_in_chain,
    error_message,
    image_request,
)
from gpu_worker.worker import WorkerConfig, timeout_message
from harness.waiting import eventually
from queueing.config import Settings
from queueing.jobs import Claim


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_claim(params: dict[str, Any] | None = None, timeout_s: int = 5) -> Claim:
    return Claim(
        job_id=uuid.uuid4(),
        claim_id=1,
        message_id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        model="tiny",
        prompt="a fox",
        params=params if params is not None else {},
        work=0.0,
        timeout_s=timeout_s,
        attempts=1,
        max_attempts=3,
        started_at=datetime.now(UTC),
        gpu_lock="test-host/cpu",
    )


def test_the_gate_lets_steps_pass_before_the_deadline() -> None:
    """R6.1: nothing interrupts a job that is within its timeout_s."""
    clock = FakeClock()
    gate = StepGate(timeout_s=5, clock=clock)
    clock.now += 4.9
    gate.check()
    assert gate.due() is None


def test_the_gate_interrupts_at_the_deadline_and_says_how_long_it_ran() -> None:
    """R6.1: past started + timeout_s the next step raises Interrupted(TIMEOUT)."""
    clock = FakeClock()
    gate = StepGate(timeout_s=5, clock=clock)
    clock.now += 5.25
    with pytest.raises(Interrupted) as caught:
        gate.check()
    assert caught.value.reason is Reason.TIMEOUT
    assert caught.value.elapsed_s == pytest.approx(5.25)
    assert gate.due() == (Reason.TIMEOUT, 105.0)


def test_a_lost_session_outranks_a_cancel_which_outranks_the_deadline() -> None:
    """Issue 3.3, 3.6: a lost session means nothing may be written, so it wins; a user's cancel
    wins over a timeout that came due at the same time."""
    clock = FakeClock()
    gate = StepGate(timeout_s=1, clock=clock)
    clock.now += 2
    gate.flag(Reason.CANCEL)
    assert gate.reason() is Reason.CANCEL
    gate.flag(Reason.LOST)
    assert gate.reason() is Reason.LOST


def test_a_flag_keeps_the_time_it_was_first_raised() -> None:
    """The wedge detector measures from the first time a reason came due."""
    clock = FakeClock()
    gate = StepGate(timeout_s=60, clock=clock)
    gate.flag(Reason.CANCEL)
    clock.now += 3
    gate.flag(Reason.CANCEL)
    assert gate.due() == (Reason.CANCEL, 100.0)


def test_a_stop_interrupts_only_after_its_grace_period() -> None:
    """Issue 3.9: a graceful stop leaves the running job until the grace period ends."""
    clock = FakeClock()
    gate = StepGate(timeout_s=60, clock=clock)
    gate.stop_by(clock.now + 30)
    clock.now += 29
    gate.check()
    gate.stop_by(clock.now)  # a second stop request: no more grace
    with pytest.raises(Interrupted) as caught:
        gate.check()
    assert caught.value.reason is Reason.STOP


def test_an_interrupt_wrapped_by_a_backend_is_still_recognised() -> None:
    """A backend may re-raise our Interrupted inside its own exception."""
    try:
        try:
            raise Interrupted(Reason.CANCEL, 1.0)
        except Interrupted as inner:
            raise RuntimeError("pipeline aborted") from inner
    except RuntimeError as outer:
        found = _interrupt_in_chain(outer)
    assert found is not None and found.reason is Reason.CANCEL
    assert _interrupt_in_chain(ValueError("plain")) is None


def test_the_request_takes_the_jobs_params() -> None:
    request = image_request(
        make_claim(
            {
                "negative_prompt": "blurry",
                "width": 640,
                "height": 384,
                "steps": 12,
                "guidance_scale": 4.5,
                "seed": 7,
            }
        )
    )
    assert (request.prompt, request.negative_prompt) == ("a fox", "blurry")
    assert (request.width, request.height, request.steps) == (640, 384, 12)
    assert (request.guidance_scale, request.seed) == (4.5, 7)


def test_missing_params_get_defaults() -> None:
    request = image_request(make_claim({}))
    assert request.negative_prompt is None
    assert (request.width, request.height, request.steps) == (512, 512, 20)
    assert (request.guidance_scale, request.seed) == (7.5, 0)


def test_the_timeout_message_says_it_timed_out_and_after_how_long() -> None:
    """R6.1, R6.3: the stored error tells the user what happened."""
    assert timeout_message(5.04, 5) == "timed out after 5.0 s (timeout_s=5)"


def test_an_exception_without_a_message_is_named_by_its_type() -> None:
    assert error_message(RuntimeError("CUDA out of memory")) == "CUDA out of memory"
    assert error_message(MemoryError()) == "MemoryError"


def test_the_worker_config_follows_the_settings() -> None:
    settings = Settings.from_env({"GPUQUEUE_STUCK_GRACE_S": "2.5"})
    config = WorkerConfig.from_settings(
        dataclasses.replace(settings, lock_warn_s=12, grace_s=3, retry_base_s=0.5)
    )
    assert (config.lock_warn_s, config.grace_s, config.stuck_grace_s) == (12, 3, 2.5)
    assert config.backoff.base_s == 0.5


async def test_the_watchdog_warns_each_interval_while_the_lock_is_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R2.5: a WARNING naming the job and the GPU once the lock is held longer than the
    threshold, again at each further interval, and none after the release."""
    watchdog = LockWatchdog(warn_s=0.05)
    claim = make_claim()
    with caplog.at_level(logging.WARNING, logger="gpu_worker.gpu_lock"):
        watchdog.held(claim)

        async def warned_twice() -> bool:
            return watchdog.warnings >= 2

        await eventually(warned_twice, within=2)
        watchdog.released()
        await asyncio.sleep(0.12)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert all("test-host/cpu" in m and str(claim.job_id) in m for m in messages)


@pytest.mark.parametrize("kind", [TypeError, ValueError, AttributeError])
def test_errors_that_cannot_succeed_on_retry_are_not_retryable(kind: type[Exception]) -> None:
    """Issue 13 item 1: these from the pipeline call fail the job at once; others are retried."""
    from gpu_worker.runner import NOT_RETRYABLE

    assert issubclass(kind, NOT_RETRYABLE)
    assert not issubclass(RuntimeError, NOT_RETRYABLE)


class NoThread(concurrent.futures.ThreadPoolExecutor):
    """A pipeline executor that counts what is handed to it."""

    handed = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.handed += 1
        return super().submit(*args, **kwargs)


@pytest.mark.parametrize(
    ("delay", "prompt", "hops"),
    [(0.0, "a fox", 0), (0.0, "a fox [fail]", 0), (0.001, "a fox", 1)],
)
async def test_an_instant_stub_call_skips_the_pipeline_thread_and_ends_the_same(
    delay: float, prompt: str, hops: int
) -> None:
    """At zero delay the stub's call is made on the loop (no thread hop); its result, image or
    error, is what the pipeline thread would have given."""
    pipeline = NoThread(1)

    async def never_probed(claim: Claim) -> tuple[bool, bool]:
        raise AssertionError("an instant job is never probed")

    runner = JobRunner(
        StubBackend(delay=delay),
        pipeline,
        None,  # type: ignore[arg-type]  # progress is never reported this fast
        probe_interval_s=60.0,
        stuck_grace_s=1.0,
        progress_interval_s=60.0,
    )
    claim = dataclasses.replace(make_claim({"width": 8, "height": 8, "steps": 2}), prompt=prompt)
    result = await runner.run(claim, StepGate(timeout_s=5), never_probed)
    pipeline.shutdown()
    assert pipeline.handed == hops
    if "[fail]" in prompt:
        assert result.png is None and result.error and "on purpose" in result.error
    else:
        assert result.reason is None and result.png is not None
