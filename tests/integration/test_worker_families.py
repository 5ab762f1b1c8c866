"""One job of each pipeline family through `gpuqueue worker --backend diffusers --model PATH`:
with and without a negative prompt, a timeout and a cancel mid-run, on tiny offline builds
(tests/integration/tiny_families.py)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.commands import WorkerChild
from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from queueing.jobs import JobRequest
from tests.integration import tiny_families
from tests.integration.worker_support import (
    job,
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    wait_all_final,
    wait_status,
)

SpawnWorker = Callable[..., WorkerChild]
pytestmark = pytest.mark.slow

# Long enough on a CPU (150 steps, the most, at 512x512: seconds for every family) to be
# interrupted well before it would end.
LONG = {"width": 512, "height": 512, "steps": 150}

# What each worker reports of its model at registration (the size rule, the defaults).
DESCRIBED: dict[str, dict[str, Any]] = {
    "tiny-sdxl": {"size_multiple": 8, "default_size": 64, "default_steps": None},
    "tiny-sd2-turbo": {"size_multiple": 8, "default_size": 64, "default_steps": 1},
    "tiny-pixart-sigma": {"size_multiple": 16, "default_size": 64, "default_steps": None},
    "tiny-flux": {"size_multiple": 16, "default_size": 1024, "default_steps": 28},
}
for _family, _guidance in zip(DESCRIBED, (None, 0.0, None, 3.5), strict=True):
    DESCRIBED[_family]["default_guidance"] = _guidance


@pytest.fixture(scope="module")
def family_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each family built once for the module."""
    root = tmp_path_factory.mktemp("families")
    for name in tiny_families.FAMILIES:
        tiny_families.build(name, root)
    return root


async def submit(
    pool: db.Pool,
    conversation_id: str,
    actor: Actor,
    model: str,
    *,
    timeout_s: int = 60,
    max_attempts: int = 1,
    **params: Any,
) -> str:
    params = {"width": 64, "height": 64, "steps": 3, "guidance_scale": 4.0, "seed": 1, **params}
    found = await jobs.enqueue(
        pool,
        conversation_id,
        JobRequest(
            "a lighthouse", params, model=model, max_attempts=max_attempts, timeout_s=timeout_s
        ),
        actor=actor,
        max_queued=10_000,
    )
    return str(found["job_id"])


async def png_size(pool: db.Pool, job_id: str) -> tuple[int, int]:
    found = await rows(pool, "SELECT png FROM job_images WHERE job_id = %(id)s", {"id": job_id})
    png = bytes(found[0]["png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    return int(width), int(height)


@pytest.mark.parametrize("family", list(tiny_families.FAMILIES))
async def test_a_family_runs_its_jobs_times_out_and_cancels_mid_run(
    pool: db.Pool,
    conversation_id: str,
    alice: Actor,
    spawn_worker: SpawnWorker,
    family_root: Path,
    family: str,
) -> None:
    """Issue 13.1, 13.3: with and without a negative prompt the job completes at exactly the
    size asked for; a size the model cannot make fails at once, without a retry; a 1 s timeout
    interrupts a long job at a step (the worker lives on); a cancel of a running job (seen by
    its progress) ends it canceled."""
    model = str(family_root / family)
    worker = spawn_worker("cpu", backend="diffusers", args=("--model", model), OMP_NUM_THREADS="1")
    await worker.registered(pool, within=120)
    (described,) = await rows(
        pool,
        "SELECT size_multiple, default_size, default_steps, default_guidance FROM models"
        " WHERE name = %(model)s",
        {"model": model},
    )
    assert described == DESCRIBED[family]
    plain = await submit(pool, conversation_id, alice, model)
    # Queued past the web edge's size rule (as a job queued before the rule was known): the
    # backend refuses it, and a ValueError from the call is not retried.
    unmakeable = await submit(pool, conversation_id, alice, model, width=72, max_attempts=3)
    negative = await submit(pool, conversation_id, alice, model, width=96, negative_prompt="fog")
    slow = await submit(pool, conversation_id, alice, model, timeout_s=1, **LONG)
    canceled = await submit(pool, conversation_id, alice, model, **LONG)
    await wait_all_final(pool, [plain, unmakeable, negative, slow], within=60)
    assert (await job(pool, plain))["status"] == "complete"
    assert (await job(pool, negative))["status"] == "complete"
    assert await png_size(pool, plain) == (64, 64)
    assert await png_size(pool, negative) == (96, 64)
    refused = await job(pool, unmakeable)
    if described["size_multiple"] == 16:
        assert refused["status"] == "error"
        assert refused["error"] == "72x64: this model makes sizes that are multiples of 16 only"
        assert refused["attempts"] == 1
    else:
        assert refused["status"] == "complete"
        assert await png_size(pool, unmakeable) == (72, 64)
    timed_out = await job(pool, slow)
    assert timed_out["status"] == "error"
    assert timed_out["error"].startswith("timed out after 1.")

    async def running_with_progress() -> bool:
        found = await rows(
            pool, "SELECT status, progress FROM jobs WHERE id = %(id)s", {"id": canceled}
        )
        progress = found[0]["progress"] or {}
        return found[0]["status"] == "processing" and int(progress.get("step", 0)) >= 1

    await eventually(running_with_progress, within=30, interval=0.02)
    await jobs.cancel(pool, canceled, actor=alice)
    seen = await wait_status(pool, canceled, ("complete", "error", "canceled"), within=30)
    assert seen["status"] == "canceled"
    assert seen["progress"]["steps"] == 150
    assert worker.alive()  # no step wedged: the worker never had to restart
