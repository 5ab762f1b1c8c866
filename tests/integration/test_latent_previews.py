"""Issue 16 item 9, the diffusers side: a preview is SD-style latents projected to RGB by a
fixed 4x3 matrix (no VAE decode), a small JPEG of the image's shape; the step hook sends one
per image of the call, the first step and then at most every PREVIEW_INTERVAL_S, never at the
last step; latents of other families (Flux's packed tokens) give none, and the call goes on."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from PIL import Image

from gpu_worker.backends import ImageRequest
from gpu_worker.backends.diffusers_backend import (
    LATENT_RGB,
    CallShape,
    call_kwargs,
    latent_preview,
)

SHAPE = CallShape(
    negative_prompt=True,
    true_cfg_scale=False,
    resolution_binning=False,
    clean_caption=False,
    step_hook="callback_on_step_end",
)


def request(width: int = 512, height: int = 768, steps: int = 4) -> ImageRequest:
    return ImageRequest("a heron", None, width, height, steps, 7.5, 1, steps * width * height / 1e6)


def decoded(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image.convert("RGB")


def test_a_preview_is_the_latents_projected_by_the_matrix_at_the_images_shape() -> None:
    latents = torch.zeros(2, 4, 96, 64)  # two 512 x 768 images: latents are 1/8 of a side
    latents[1, 0] = 1.0  # the second image: channel 0 only, so its colour is the matrix's row 0
    grey = decoded(latent_preview(latents, 0, 512, 768) or b"")
    tinted = decoded(latent_preview(latents, 1, 512, 768) or b"")
    assert grey.size == tinted.size == (64, 96)
    assert all(abs(v - 127) <= 2 for v in grey.getpixel((32, 48)))
    expected = [round((1 + c) * 127.5) for c in LATENT_RGB[0]]
    got = tinted.getpixel((32, 48))
    assert all(abs(g - e) <= 3 for g, e in zip(got, expected, strict=True)), (got, expected)


def test_big_latents_are_shrunk_to_fit_128_px() -> None:
    jpeg = latent_preview(torch.randn(1, 4, 256, 128), 0, 1024, 2048)
    assert decoded(jpeg or b"").size == (64, 128)


def test_latents_that_are_not_sd_style_give_no_preview() -> None:
    assert latent_preview(torch.randn(1, 4096, 64), 0, 1024, 1024) is None  # Flux: packed
    assert latent_preview(torch.randn(1, 16, 128, 128), 0, 1024, 1024) is None  # SD3


@pytest.mark.parametrize(
    ("latents", "sent"),
    [(torch.zeros(2, 4, 96, 64), [0, 1]), (torch.zeros(2, 1024, 64), [])],
    ids=["sd-style", "flux-style"],
)
def test_the_step_hook_sends_each_images_preview_before_its_step(
    latents: torch.Tensor, sent: list[int]
) -> None:
    calls: list[Any] = []
    requests = [request(), request()]
    kwargs = call_kwargs(
        SHAPE,
        requests,
        [None, None],
        lambda step, steps: calls.append(("step", step)),
        pipeline=None,
        on_preview=lambda index, image: calls.append(("preview", index, image[:3])),
    )
    hook = kwargs["callback_on_step_end"]

    class Pipe:
        num_timesteps = 4

    for index in range(4):
        assert hook(Pipe(), index, None, {"latents": latents}) == {"latents": latents}
    previews = [("preview", i, b"\xff\xd8\xff") for i in sent]
    assert calls[: len(sent) + 1] == [*previews, ("step", 1)]  # the first step has previews
    assert [c for c in calls if c[0] == "step"] == [("step", s) for s in (1, 2, 3, 4)]
    assert calls[-2:] == [("step", 3), ("step", 4)]  # none at the last step: the image is next
