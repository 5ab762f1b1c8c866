"""Batching with the tiny diffusers model (issue 13 item 4; contract: Batching): one call with
a list of prompts and one generator per job, so a batched job's image is the one it would get
alone, within a mean absolute difference of 1 of 255."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpu_worker.backends import Backend, ImageRequest, make_backend
from gpu_worker.backends.diffusers_backend import DiffusersBackend
from harness.commands import WorkerChild
from queueing import db
from queueing.actors import Actor
from tests.integration import tiny_families
from tests.integration.test_worker_diffusers import diffusers_env, png_of
from tests.integration.worker_support import (
    job,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    submit,
    wait_all_final,
    wait_status,
)

SpawnWorker = Callable[..., WorkerChild]
pytestmark = pytest.mark.slow

FOX = ImageRequest(
    prompt="a red fox",
    negative_prompt=None,
    width=64,
    height=64,
    steps=3,
    guidance_scale=7.5,
    seed=1,
    work=3 * 64 * 64 / 1e6,
)


def mean_abs_diff(a: bytes, b: bytes) -> float:
    """Mean absolute pixel difference of two PNGs, on the 0-255 scale."""
    first = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.float64)
    second = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64)
    assert first.shape == second.shape
    return float(np.abs(first - second).mean())


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    loaded = make_backend(
        "diffusers", device="cpu", model="tiny", data_dir=tmp_path_factory.mktemp("data")
    )
    loaded.load()
    return loaded


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_each_image_of_a_batch_is_the_one_its_request_gets_alone(
    backend: Backend, negative: str | None
) -> None:
    """Three prompts and seeds in one call; each image within 1/255 of the same request run
    alone, and the batch steps once per step for all of them."""
    requests = [
        replace(FOX, negative_prompt=negative),
        replace(FOX, prompt="a lighthouse at dusk", seed=7, negative_prompt=negative),
        replace(FOX, seed=2, negative_prompt=negative),
    ]
    steps: list[tuple[int, int]] = []
    batched = backend.generate_batch(requests, lambda s, n: steps.append((s, n)))
    assert len(batched) == 3
    assert [s for s, _ in steps] == [1, 2, 3]
    for request, image in zip(requests, batched, strict=True):
        alone = backend.generate(request, lambda s, n: None)
        assert mean_abs_diff(image, alone) <= 1.0
    assert mean_abs_diff(batched[0], batched[2]) > 1.0  # another seed is another image


@pytest.fixture(scope="module", params=list(tiny_families.FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    root = tmp_path_factory.mktemp("families")
    loaded = DiffusersBackend(
        device="cpu", model=str(tiny_families.build(request.param, root)), data_dir=root
    )
    loaded.load()
    return loaded


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_every_family_batches_to_the_images_its_requests_get_alone(
    family: Backend, negative: str | None
) -> None:
    """SDXL, SD 2.x turbo-style, PixArt-Sigma and Flux: a list of prompts with one generator
    each (and the negative prompt once per prompt) gives each request its own image."""
    requests = [
        replace(FOX, guidance_scale=4.0, negative_prompt=negative),
        replace(FOX, prompt="a lighthouse", seed=5, guidance_scale=4.0, negative_prompt=negative),
    ]
    batched = family.generate_batch(requests, lambda s, n: None)
    for request, image in zip(requests, batched, strict=True):
        assert mean_abs_diff(image, family.generate(request, lambda s, n: None)) <= 1.0


async def test_a_batch_through_the_worker_matches_the_jobs_run_alone(
    pool: db.Pool,
    conversation_id: str,
    alice: Actor,
    spawn_worker: SpawnWorker,
    tmp_path: Path,
) -> None:
    """`gpuqueue worker --backend diffusers --max-batch 3`: three queued jobs start as one
    batch; the same requests then run one at a time give the same images within 1/255."""
    params = {"width": 64, "height": 64, "steps": 3, "guidance_scale": 5.0}
    prompts = [("a lighthouse", 42), ("a red fox", 1), ("a lighthouse", 43)]
    batch = [await submit(pool, conversation_id, alice, p, seed=s, **params) for p, s in prompts]
    worker = spawn_worker(
        "cpu", backend="diffusers", args=("--max-batch", "3"), **diffusers_env(tmp_path)
    )
    await wait_all_final(pool, batch, within=120)
    shown = [await job(pool, j) for j in batch]
    assert {s["status"] for s in shown} == {"complete"}, shown
    assert {s["batch"]["size"] for s in shown} == {3}
    for (prompt, seed), batched in zip(prompts, batch, strict=True):
        alone = await submit(pool, conversation_id, alice, prompt, seed=seed, **params)
        done = await wait_status(pool, alone, "complete", within=60)
        assert (await job(pool, alone))["batch"] is None, done
        assert mean_abs_diff(await png_of(pool, batched), await png_of(pool, alone)) <= 1.0
    assert worker.alive(), worker.log()
