"""Image backends and the one place that picks between them."""

from pathlib import Path

from gpu_worker.backends.base import Backend, ImageRequest, StepCallback
from gpu_worker.backends.pipeline_options import DEFAULT, PipelineOptions
from queueing.config import Settings

__all__ = ["Backend", "ImageRequest", "StepCallback", "default_max_batch", "make_backend"]

# --max-batch when none is given, by backend and device type, from `python -m bench batch`
# (README: Batching): the tiny diffusers model on a CPU runs 2.66x the images/s at 4 (1.65x at
# 2). Not measured yet, so one job per call: diffusers on CUDA (the `gpu` family measures it)
# and the stub, whose speed-up is its own delay model and whose users (load tests, demos, the
# tests) expect one job per call.
DEFAULT_MAX_BATCH: dict[tuple[str, str], int] = {("diffusers", "cpu"): 4}


def default_max_batch(backend: str, device: str) -> int:
    """The measured default batch size for this backend on this kind of device, else 1."""
    return DEFAULT_MAX_BATCH.get((backend, device.split(":", 1)[0]), 1)


def make_backend(
    name: str,
    *,
    device: str,
    model: str,
    data_dir: Path,
    stub_delay_s: float = Settings.stub_delay_s,
    stub_delay_per_work_s: float = Settings.stub_delay_per_work_s,
    options: PipelineOptions = DEFAULT,
) -> Backend:
    """Build the named backend, importing only its own dependencies.

    The imports are local so that the stub runs where torch and diffusers are not installed.
    """
    if name == "stub":
        from gpu_worker.backends.stub import StubBackend

        return StubBackend(stub_delay_s, stub_delay_per_work_s)
    if name == "diffusers":
        from gpu_worker.backends.diffusers_backend import DiffusersBackend

        return DiffusersBackend(device=device, model=model, data_dir=data_dir, options=options)
    raise ValueError(f"unknown backend {name!r}; expected 'diffusers' or 'stub'")
