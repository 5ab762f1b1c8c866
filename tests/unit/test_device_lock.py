"""The OS-level GPU lock (gpu_worker/device_lock.py): two DeviceLocks on one file are two
open file descriptions, so they exclude each other as two processes would."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_worker.device_lock import DeviceLock
from harness.waiting import eventually

GPU = "box/cuda:0"


async def _queued(lock: DeviceLock) -> bool:
    """A waiter holds the lock's queue file while it waits (so a releasing holder queues)."""
    await asyncio.sleep(0)
    return lock._queue.held


@pytest.fixture
def pipeline() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    executor = concurrent.futures.ThreadPoolExecutor(1)
    yield executor
    executor.shutdown(wait=True)


async def test_a_second_holder_waits_without_blocking_the_loop_and_a_stop_ends_the_wait(
    tmp_path: Path, pipeline: concurrent.futures.ThreadPoolExecutor
) -> None:
    first, second = DeviceLock(tmp_path, GPU, pipeline), DeviceLock(tmp_path, GPU, pipeline)
    stopping, wake = asyncio.Event(), asyncio.Event()
    assert await first.acquire(stopping, wake)
    waiting = asyncio.create_task(second.acquire(stopping, wake))
    await eventually(lambda: _queued(second), within=2)  # the loop runs on while it waits
    assert not waiting.done()
    stopping.set()
    wake.set()
    assert await asyncio.wait_for(waiting, 1) is False
    assert not second.held and first.held
    first.close()
    second.close()


async def test_waiters_take_turns_with_a_holder_that_takes_it_straight_back(
    tmp_path: Path, pipeline: concurrent.futures.ThreadPoolExecutor
) -> None:
    first, second = DeviceLock(tmp_path, GPU, pipeline), DeviceLock(tmp_path, GPU, pipeline)
    stopping, wake = asyncio.Event(), asyncio.Event()
    assert await first.acquire(stopping, wake)
    waiting = asyncio.create_task(second.acquire(stopping, wake))
    await eventually(lambda: _queued(second), within=2)
    first.release()
    again = asyncio.create_task(first.acquire(stopping, asyncio.Event()))
    assert await asyncio.wait_for(waiting, 1) is True
    assert not again.done() and not first.held
    second.release()
    assert await asyncio.wait_for(again, 1) is True
    first.close()
    second.close()


async def test_a_holder_sees_a_waiter_so_it_hands_the_gpu_over_between_jobs(
    tmp_path: Path, pipeline: concurrent.futures.ThreadPoolExecutor
) -> None:
    """The worker keeps its lock for a claim sent with a completion only while nobody waits."""
    first, second = DeviceLock(tmp_path, GPU, pipeline), DeviceLock(tmp_path, GPU, pipeline)
    stopping, wake = asyncio.Event(), asyncio.Event()
    assert await first.acquire(stopping, wake)
    assert not first.awaited()
    waiting = asyncio.create_task(second.acquire(stopping, wake))
    await eventually(lambda: _queued(second), within=2)
    assert first.awaited()
    first.release()
    assert await asyncio.wait_for(waiting, 1) is True
    assert not second.awaited()  # the waiter that got it no longer queues
    first.close()
    second.close()


async def test_a_release_handed_to_a_busy_pipeline_waits_until_its_step_returns(
    tmp_path: Path, pipeline: concurrent.futures.ThreadPoolExecutor
) -> None:
    lock, other = DeviceLock(tmp_path, GPU, pipeline), DeviceLock(tmp_path, GPU, pipeline)
    stopping, wake = asyncio.Event(), asyncio.Event()
    assert await lock.acquire(stopping, wake)
    step = threading.Event()
    pipeline.submit(step.wait)  # a pipeline step still running
    lock.release_when_idle()
    lock.release()  # the job's own release: the pending one stays in charge
    waiting = asyncio.create_task(other.acquire(stopping, wake))
    await eventually(lambda: _queued(other), within=2)  # it has tried, and waits
    assert lock.held and not waiting.done()
    step.set()
    assert await asyncio.wait_for(waiting, 2) is True
    lock.close()
    other.close()
