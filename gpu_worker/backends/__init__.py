"""Image backends and the one place that picks between them."""

from pathlib import Path

from gpu_worker.backends.base import Backend, ImageRequest, StepCallback
from queueing.config import Settings

__all__ = ["Backend", "ImageRequest", "StepCallback", "make_backend"]


def make_backend(
    name: str,
    *,
    device: str,
    model: str,
    data_dir: Path,
    stub_delay_s: float = Settings.stub_delay_s,
    stub_delay_per_work_s: float = Settings.stub_delay_per_work_s,
) -> Backend:
    """Build the named backend, importing only its own dependencies.

    The imports are local so that the stub runs where torch and diffusers are not installed.
    """
    if name == "stub":
        from gpu_worker.backends.stub import StubBackend

        return StubBackend(stub_delay_s, stub_delay_per_work_s)
    if name == "diffusers":
        from gpu_worker.backends.diffusers_backend import DiffusersBackend

        return DiffusersBackend(device=device, model=model, data_dir=data_dir)
    raise ValueError(f"unknown backend {name!r}; expected 'diffusers' or 'stub'")
