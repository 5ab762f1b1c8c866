"""The real backend: a diffusers text-to-image pipeline on one device.

torch and diffusers take seconds to import, so they are imported by load(), which the worker
runs in a thread, and not when the backend is made: a web server in the same process stays up.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpu_worker.backends.base import ImageRequest, StepCallback
from queueing.config import BUILTIN_MODEL

if TYPE_CHECKING:
    import torch

# transformers' notice, once per image processor, that it uses the PIL one as torchvision is
# missing: the pipeline works the same, so it is not worth three lines of the console.
TORCHVISION_NOTICE = "requires torchvision (not installed); falling back to"


def pick_dtype(device: torch.device) -> torch.dtype:
    """Half precision on a GPU (bfloat16 where the hardware has it), full precision on a CPU."""
    import torch

    if device.type != "cuda":
        return torch.float32
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for, but torch sees no CUDA GPU")
    major, _minor = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16  # native bfloat16 came with Ampere


def _not_the_torchvision_notice(record: logging.LogRecord) -> bool:
    return TORCHVISION_NOTICE not in record.getMessage()


def _quiet_loading() -> None:
    """One console line per step: no torchvision notice (importing diffusers can give it, so
    this comes first) and no progress bars while loading."""
    logging.getLogger("transformers.utils.import_utils").addFilter(_not_the_torchvision_notice)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


class DiffusersBackend:
    """Loads one pipeline per process and runs the jobs on it, one at a time."""

    name = "diffusers"

    def __init__(self, *, device: str, model: str, data_dir: Path) -> None:
        self.device = device
        self.model = model
        self.data_dir = data_dir
        self._pipeline: Any = None  # diffusers' pipelines are untyped

    def load(self) -> None:
        """Load the model, or the locally built tiny one for the built-in name."""
        _quiet_loading()
        import torch
        from diffusers import AutoPipelineForText2Image, DiffusionPipeline

        from gpu_worker.tiny_model import ensure_tiny_model

        device = torch.device(self.device)
        source = self.model
        if source == BUILTIN_MODEL:
            source = str(ensure_tiny_model(self.data_dir))
        options: dict[str, Any] = {"dtype": pick_dtype(device)}
        # Only for pipelines that have a checker: others would warn about an unknown argument.
        if "safety_checker" in DiffusionPipeline.load_config(source):
            options.update(safety_checker=None, requires_safety_checker=False)
        pipeline = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
            source, **options
        )
        pipeline.set_progress_bar_config(disable=True)
        self._pipeline = pipeline.to(device)

    def generate(self, request: ImageRequest, on_step: StepCallback) -> bytes:
        """Render the request and return PNG bytes; an exception from on_step ends the run."""
        import torch

        pipeline = self._pipeline
        if pipeline is None:
            raise RuntimeError("DiffusersBackend.generate called before load()")

        def step_end(
            pipe: Any, index: int, _timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            # Multistep schedulers may run more iterations than steps asked for; count those.
            on_step(index + 1, getattr(pipe, "num_timesteps", 0) or request.steps)
            return tensors

        # A CPU generator draws the same noise on every device, so a seed means one image.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        with torch.inference_mode():
            result = pipeline(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                width=request.width,
                height=request.height,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                generator=generator,
                callback_on_step_end=step_end,
            )
        buffer = io.BytesIO()
        result.images[0].save(buffer, format="PNG")
        return buffer.getvalue()
