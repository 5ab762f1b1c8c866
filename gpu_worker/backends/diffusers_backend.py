"""The real backend: a diffusers text-to-image pipeline on one device.

torch and diffusers take seconds to import, so they are imported by load(), which the worker
runs in a thread, and not when the backend is made: a web server in the same process stays up.
"""

from __future__ import annotations

import inspect
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gpu_worker.backends.base import (
    ImageRequest,
    PreviewCallback,
    PreviewPacer,
    StepCallback,
    preview_size,
)
from gpu_worker.backends.pipeline_options import DEFAULT, PipelineOptions
from queueing.config import BUILTIN_MODEL
from queueing.models import ModelCapabilities

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


# Step-distilled checkpoints are named for their distillation; their model configs do not say
# it. Name fragment (lower case) -> (steps, guidance): what their model cards recommend.
DISTILLED_DEFAULTS: dict[str, tuple[int, float]] = {
    "turbo": (1, 0.0),  # sd-turbo, sdxl-turbo
    "schnell": (4, 0.0),  # FLUX.1-schnell
    "lightning": (4, 0.0),  # SDXL-Lightning
    "lcm": (4, 0.0),  # latent consistency models
}
# Guidance-distilled Flux (dev): guidance is an input of the transformer, not a second pass.
FLUX_DEV_DEFAULTS = (28, 3.5)

StepHook = Literal["callback_on_step_end", "callback", "none"]

# Previews (issue 16): SD-style latents have 4 channels that map almost linearly to RGB, so a
# preview is a 4x3 matrix product on the latents, no VAE decode. These are the "approximate
# cheap" factors of the Stable Diffusion web UI, fitted for SD 1.x; SD 2.x, SDXL and PixArt
# (SD-style VAEs) come out close enough for a preview. Other latents (Flux's packed tokens,
# SD3's 16 channels) get none.
LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
PREVIEW_JPEG_QUALITY = 80

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallShape:
    """What the loaded pipeline's __call__ accepts, read once from its signature at load."""

    negative_prompt: bool
    true_cfg_scale: bool  # Flux-style: classifier-free guidance only with this above 1
    resolution_binning: bool  # PixArt: would snap sizes to its aspect-ratio table unless off
    clean_caption: bool  # PixArt: needs bs4 and ftfy; always off
    step_hook: StepHook

    @classmethod
    def of(cls, pipeline: Any) -> CallShape:
        accepted = inspect.signature(pipeline.__call__).parameters
        hook: StepHook = "none"
        if "callback_on_step_end" in accepted:
            hook = "callback_on_step_end"
        elif "callback" in accepted and "callback_steps" in accepted:
            hook = "callback"
        return cls(
            negative_prompt="negative_prompt" in accepted,
            true_cfg_scale="true_cfg_scale" in accepted,
            resolution_binning="use_resolution_binning" in accepted,
            clean_caption="clean_caption" in accepted,
            step_hook=hook,
        )


def model_capabilities(pipeline: Any, model: str) -> ModelCapabilities:
    """From the pipeline's components where diffusers has them, else DISTILLED_DEFAULTS by the
    model's name (its folder's, or a hub id's last part)."""
    scale = int(getattr(pipeline, "vae_scale_factor", 8))
    denoiser = getattr(pipeline, "transformer", None) or getattr(pipeline, "unet", None)
    config = getattr(denoiser, "config", None)
    patch = int(getattr(config, "patch_size", None) or 1)
    if hasattr(pipeline, "_pack_latents"):  # Flux packs 2x2 latent patches into tokens
        patch *= 2
    sample = getattr(pipeline, "default_sample_size", None) or getattr(config, "sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    default_size = int(sample) * scale if isinstance(sample, int) else None
    steps: int | None = None
    guidance: float | None = None
    name = Path(model).name.lower()  # a folder's or a hub id's last part
    for fragment, (fragment_steps, fragment_guidance) in DISTILLED_DEFAULTS.items():
        if fragment in name:
            steps, guidance = fragment_steps, fragment_guidance
            break
    else:
        if hasattr(pipeline, "_pack_latents") and config is not None:
            if getattr(config, "guidance_embeds", False):
                steps, guidance = FLUX_DEV_DEFAULTS
            else:
                steps, guidance = DISTILLED_DEFAULTS["schnell"]
    return ModelCapabilities(
        size_multiple=scale * patch,
        default_size=default_size,
        default_steps=steps,
        default_guidance=guidance,
    )


def latent_preview(latents: Any, index: int, width: int, height: int) -> bytes | None:
    """A small JPEG of the index-th image of SD-style latents (batch, 4, h, w), projected to
    RGB by LATENT_RGB, at the latents' size or shrunk to fit PREVIEW_SIDE; None for latents of
    any other shape."""
    import torch
    from PIL import Image

    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != 4:
        return None
    matrix = torch.tensor(LATENT_RGB, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("chw,cr->rhw", latents[index].float(), matrix)
    side_w, side_h = preview_size(width, height)
    if rgb.shape[1] > side_h or rgb.shape[2] > side_w:  # latents are 1/8 of the image: rarely
        rgb = torch.nn.functional.interpolate(rgb[None], size=(side_h, side_w), mode="area")[0]
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return buffer.getvalue()


class Previewer:
    """Sends the previews of one call when the pacer says one is due. Best effort: a preview
    that fails is logged once and the call goes on without previews."""

    def __init__(self, requests: Sequence[ImageRequest], on_preview: PreviewCallback) -> None:
        self._requests = requests
        self._on_preview: PreviewCallback | None = on_preview
        self._pacer = PreviewPacer()

    def step(self, step: int, steps: int, latents: Any) -> None:
        on_preview = self._on_preview
        if on_preview is None or not self._pacer.due(step, steps):
            return
        try:
            for index, request in enumerate(self._requests):
                image = latent_preview(latents, index, request.width, request.height)
                if image is None:
                    self._on_preview = None  # latents of another kind: no previews at all
                    return
                on_preview(index, image)
        except Exception:
            log.exception("previews are off for this call: making one failed")
            self._on_preview = None


def call_kwargs(
    shape: CallShape,
    requests: Sequence[ImageRequest],
    generators: Sequence[Any],
    on_step: StepCallback,
    pipeline: Any,
    on_preview: PreviewCallback | None = None,
) -> dict[str, Any]:
    """The keyword arguments of one pipeline call for these requests (one, or a batch that
    shares size, steps, guidance and negative prompt), one generator per request; previews
    from the step hook's latents when `on_preview` is given."""
    first = requests[0]
    batched = len(requests) > 1
    kwargs: dict[str, Any] = {
        "prompt": [r.prompt for r in requests] if batched else first.prompt,
        "width": first.width,
        "height": first.height,
        "num_inference_steps": first.steps,
        "guidance_scale": first.guidance_scale,
        "generator": list(generators) if batched else generators[0],
    }
    negative = first.negative_prompt
    if negative and shape.negative_prompt:
        kwargs["negative_prompt"] = [negative] * len(requests) if batched else negative
        if shape.true_cfg_scale:
            kwargs["true_cfg_scale"] = first.guidance_scale
    if shape.resolution_binning:
        kwargs["use_resolution_binning"] = False
    if shape.clean_caption:
        kwargs["clean_caption"] = False

    def total(pipe: Any) -> int:
        # Multistep schedulers may run more iterations than steps asked for; count those.
        return int(getattr(pipe, "num_timesteps", 0) or first.steps)

    previewer = None if on_preview is None else Previewer(requests, on_preview)
    if shape.step_hook == "callback_on_step_end":

        def step_end(pipe: Any, index: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if previewer is not None:
                previewer.step(index + 1, total(pipe), tensors.get("latents"))
            on_step(index + 1, total(pipe))
            return tensors

        kwargs["callback_on_step_end"] = step_end
    elif shape.step_hook == "callback":

        def step(index: int, _t: Any, latents: Any) -> None:
            if previewer is not None:
                previewer.step(index + 1, total(pipeline), latents)
            on_step(index + 1, total(pipeline))

        kwargs["callback"] = step
        kwargs["callback_steps"] = 1
    return kwargs


class DiffusersBackend:
    """Loads one pipeline per process and runs the jobs on it, one at a time.

    The call is built from the pipeline's signature (CallShape): families differ in how they
    take a negative prompt, guidance and a step callback. A family with no step hook at all
    is checked before and after its call: a cancel or deadline that comes due during it
    discards the image, and one past the worker's stuck grace restarts the worker.
    """

    name = "diffusers"

    def __init__(
        self,
        *,
        device: str,
        model: str,
        data_dir: Path,
        options: PipelineOptions = DEFAULT,
    ) -> None:
        self.device = device
        self.model = model
        self.data_dir = data_dir
        self.options = options
        self._pipeline: Any = None  # diffusers' pipelines are untyped
        self._shape: CallShape | None = None
        self.capabilities: ModelCapabilities | None = None

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
        chosen = self.options
        if chosen.offload != "none" and device.type != "cuda":
            raise ValueError(f"--offload {chosen.offload} needs a CUDA device, not {device}")
        dtype = pick_dtype(device) if chosen.dtype == "auto" else getattr(torch, chosen.dtype)
        options: dict[str, Any] = {"dtype": dtype}
        if chosen.variant:
            options["variant"] = chosen.variant
        # Only for pipelines that have a checker: others would warn about an unknown argument.
        if "safety_checker" in DiffusionPipeline.load_config(source):
            options.update(safety_checker=None, requires_safety_checker=False)
        pipeline = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
            source, **options
        )
        pipeline.set_progress_bar_config(disable=True)
        denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        if chosen.attention == "eager" and denoiser is not None:
            denoiser.set_default_attn_processor()
        if chosen.vae_tiling:
            pipeline.vae.enable_tiling()
        if chosen.offload == "model":
            pipeline.enable_model_cpu_offload(device=device)
        elif chosen.offload == "sequential":
            pipeline.enable_sequential_cpu_offload(device=device)
        else:
            pipeline = pipeline.to(device)
        self._pipeline = pipeline
        # load() runs in the pipeline thread: this is the count its calls use (OMP_NUM_THREADS).
        log.info("torch runs the pipeline on %d intra-op thread(s)", torch.get_num_threads())
        self._shape = CallShape.of(pipeline)
        self.capabilities = model_capabilities(pipeline, self.model)
        if chosen.compile and denoiser is not None:
            name = "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
            setattr(pipeline, name, torch.compile(denoiser))
            self._warm_up()

    @property
    def call_shape(self) -> CallShape | None:
        """What the loaded pipeline's call accepts; None before load()."""
        return self._shape

    def generate(
        self,
        request: ImageRequest,
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
    ) -> bytes:
        """Render the request and return PNG bytes; an exception from on_step ends the run."""
        import torch

        pipeline, shape = self._pipeline, self._shape
        if pipeline is None or shape is None or self.capabilities is None:
            raise RuntimeError("DiffusersBackend.generate called before load()")
        multiple = self.capabilities.size_multiple
        if request.width % multiple or request.height % multiple:
            raise ValueError(
                f"{request.width}x{request.height}: this model makes sizes that are"
                f" multiples of {multiple} only"
            )
        # A CPU generator draws the same noise on every device, so a seed means one image.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        kwargs = call_kwargs(shape, [request], [generator], on_step, pipeline, on_preview)
        if shape.step_hook == "none":
            on_step(0, request.steps)
        with torch.inference_mode():
            result = pipeline(**kwargs)
        if shape.step_hook == "none":
            on_step(request.steps, request.steps)
        buffer = io.BytesIO()
        result.images[0].save(buffer, format="PNG")
        return buffer.getvalue()

    def generate_batch(
        self,
        requests: Sequence[ImageRequest],
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
    ) -> list[bytes]:
        """Render compatible requests in one call: a list of prompts and one generator per
        request, seeded as `generate` seeds it, so each image is the one it would get alone
        (up to the float rounding of a batched matmul)."""
        import torch

        pipeline, shape = self._pipeline, self._shape
        if pipeline is None or shape is None or self.capabilities is None:
            raise RuntimeError("DiffusersBackend.generate_batch called before load()")
        if len(requests) == 1:
            return [self.generate(requests[0], on_step, on_preview)]
        first = requests[0]
        multiple = self.capabilities.size_multiple
        if first.width % multiple or first.height % multiple:
            raise ValueError(
                f"{first.width}x{first.height}: this model makes sizes that are"
                f" multiples of {multiple} only"
            )
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
        kwargs = call_kwargs(shape, requests, generators, on_step, pipeline, on_preview)
        if shape.step_hook == "none":
            on_step(0, first.steps)
        with torch.inference_mode():
            result = pipeline(**kwargs)
        if shape.step_hook == "none":
            on_step(first.steps, first.steps)
        images: list[bytes] = []
        for image in result.images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            images.append(buffer.getvalue())
        return images

    def _warm_up(self) -> None:
        """One small call, so torch.compile's compilation happens at load, not in a user's job."""
        assert self.capabilities is not None
        side = max(self.capabilities.size_multiple * 8, 64)
        warm = ImageRequest("warm-up", None, side, side, 2, 1.0, 0, 2 * side * side / 1e6)
        self.generate(warm, lambda _step, _steps: None)
