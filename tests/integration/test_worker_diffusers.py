"""The tiny diffusers pipeline end to end through `gpuqueue worker --backend diffusers`."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.commands import WorkerChild
from queueing import db
from queueing.actors import Actor
from tests.integration.test_worker_memory import assert_rss_flat
from tests.integration.worker_support import (
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    submit,
    wait_all_final,
)

SpawnWorker = Callable[..., WorkerChild]
pytestmark = pytest.mark.slow


def diffusers_env(data_dir: Path) -> dict[str, str]:
    """One intra-op thread: OpenMP threads spin badly on a shared, oversubscribed CI machine."""
    return {"GPUQUEUE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the module: the first worker builds the tiny model, the next reuse it."""
    return tmp_path_factory.mktemp("data")


async def png_of(pool: db.Pool, job_id: str) -> bytes:
    found = await rows(pool, "SELECT png FROM job_images WHERE job_id = %(id)s", {"id": job_id})
    return bytes(found[0]["png"])


async def test_the_tiny_pipeline_makes_the_same_png_for_the_same_seed(
    pool: db.Pool,
    conversation_id: str,
    alice: Actor,
    spawn_worker: SpawnWorker,
    tiny_data_dir: Path,
) -> None:
    """Issue 3.7, 3.8: a real diffusers pipeline (built locally, loaded through from_pretrained)
    honours prompt, negative prompt, size, steps, guidance and seed; the PNG is stored with the
    completed job, and the same seed gives the same image, a different seed another. One job
    per call: byte for byte the same holds for jobs run alone (a batched one is within 1/255,
    test_diffusers_batches)."""
    worker = spawn_worker(
        "cpu", backend="diffusers", args=("--max-batch", "1"), **diffusers_env(tiny_data_dir)
    )
    await worker.registered(pool, within=120)
    params: dict[str, Any] = {
        "negative_prompt": "blurry",
        "width": 64,
        "height": 48,
        "steps": 3,
        "guidance_scale": 5.0,
    }
    first = await submit(pool, conversation_id, alice, "a lighthouse", seed=42, **params)
    again = await submit(pool, conversation_id, alice, "a lighthouse", seed=42, **params)
    other = await submit(pool, conversation_id, alice, "a lighthouse", seed=43, **params)
    await wait_all_final(pool, [first, again, other], within=60)
    statuses = await rows(pool, "SELECT DISTINCT status FROM jobs")
    assert statuses == [{"status": "complete"}]
    png = await png_of(pool, first)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (64, 48)  # IHDR width, height
    assert await png_of(pool, again) == png
    assert await png_of(pool, other) != png


async def test_rss_stays_flat_over_100_tiny_diffusers_jobs(
    pool: db.Pool,
    conversation_id: str,
    alice: Actor,
    spawn_worker: SpawnWorker,
    tiny_data_dir: Path,
) -> None:
    """R9.4: after warm-up, the worker's RSS grows by less than 5% over 100 jobs of the tiny
    diffusers pipeline (real torch, real pipeline, on the CPU)."""
    worker = spawn_worker("cpu", backend="diffusers", **diffusers_env(tiny_data_dir))
    await assert_rss_flat(
        worker,
        pool,
        conversation_id,
        alice,
        warmup=10,
        jobs=100,
        within=120,
        steps=3,
    )
