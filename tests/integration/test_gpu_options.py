"""The diffusers backend's GPU options (issue 13, item 5) on the tiny local model, on CPU: each
option reaches the pipeline, and one that cannot work on this device is refused at load."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from gpu_worker.backends import ImageRequest
from gpu_worker.backends.diffusers_backend import DiffusersBackend
from gpu_worker.backends.pipeline_options import PipelineOptions
from queueing.config import Settings

FOX = ImageRequest("a red fox", None, 64, 64, 2, 7.5, 1, 2 * 64 * 64 / 1e6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def loaded(data_dir: Path, **options: object) -> DiffusersBackend:
    backend = DiffusersBackend(
        device="cpu", model="tiny", data_dir=data_dir, options=PipelineOptions(**options)
    )
    backend.load()
    return backend


def size_of(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        return image.size


def test_dtype_attention_and_vae_tiling_reach_the_pipeline(data_dir: Path) -> None:
    backend = loaded(data_dir, dtype="float32", attention="eager", vae_tiling=True)
    pipeline = backend._pipeline
    assert pipeline.unet.dtype == torch.float32
    assert pipeline.vae.use_tiling
    processors = {type(p).__name__ for p in pipeline.unet.attn_processors.values()}
    assert processors == {"AttnProcessor"}, processors  # not the SDPA one, AttnProcessor2_0
    assert size_of(backend.generate(FOX, lambda _s, _n: None)) == (64, 64)


def test_the_default_attention_is_pytorchs_sdpa(data_dir: Path) -> None:
    pipeline = loaded(data_dir)._pipeline
    processors = {type(p).__name__ for p in pipeline.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}, processors


def test_offload_needs_a_cuda_device(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        loaded(data_dir, offload="model")


def test_an_unknown_choice_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        PipelineOptions(dtype="float8")


def test_the_flags_are_read_from_the_environment() -> None:
    settings = Settings.from_env({"GPUQUEUE_VAE_TILING": "on", "GPUQUEUE_COMPILE": "0"})
    assert (settings.vae_tiling, settings.compile) == (True, False)
    with pytest.raises(ValueError, match="GPUQUEUE_COMPILE"):
        Settings.from_env({"GPUQUEUE_COMPILE": "maybe"})
