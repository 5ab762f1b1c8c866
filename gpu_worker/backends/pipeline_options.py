"""How the diffusers backend places and runs its pipeline on a GPU (README: GPU options).

Plain data, so the command line can offer the choices without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "float32", "float16", "bfloat16")
OFFLOADS = ("none", "model", "sequential")
ATTENTIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class PipelineOptions:
    """`dtype` auto: bfloat16 on GPUs that have it, float16 on older ones, float32 on a CPU.
    `offload` model/sequential: diffusers' CPU offload for cards too small for the model.
    `attention` sdpa: PyTorch's scaled-dot-product attention (diffusers' default); eager: the
    plain processor. `vae_tiling`: decode in tiles (large images on small cards). `variant`: the
    weights' file variant to load (e.g. fp16). `compile`: torch.compile the denoiser, warmed up
    by one small call at load, before the worker registers."""

    dtype: str = "auto"
    offload: str = "none"
    attention: str = "sdpa"
    vae_tiling: bool = False
    variant: str | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("dtype", self.dtype, DTYPES),
            ("offload", self.offload, OFFLOADS),
            ("attention", self.attention, ATTENTIONS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


DEFAULT = PipelineOptions()
