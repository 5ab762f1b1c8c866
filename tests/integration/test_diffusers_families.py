"""The diffusers backend on tiny builds of each family (tests/integration/tiny_families.py):
the call built from the pipeline's signature, the sizes and defaults each model reports."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from gpu_worker.backends import ImageRequest
from gpu_worker.backends.diffusers_backend import CallShape, DiffusersBackend, call_kwargs
from tests.integration import tiny_families

FOX = ImageRequest(
    prompt="a red fox",
    negative_prompt=None,
    width=64,
    height=64,
    steps=3,
    guidance_scale=4.0,
    seed=1,
    work=3 * 64 * 64 / 1e6,
)


def ignore(step: int, steps: int) -> None:
    """A callback for tests that do not look at progress."""


@pytest.fixture(scope="module")
def family_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("families")
    for name in tiny_families.FAMILIES:
        tiny_families.build(name, root)
    return root


@pytest.fixture(scope="module", params=list(tiny_families.FAMILIES))
def backend(request: pytest.FixtureRequest, family_root: Path) -> DiffusersBackend:
    loaded = DiffusersBackend(
        device="cpu", model=str(family_root / request.param), data_dir=family_root
    )
    loaded.load()
    return loaded


def size_of(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return image.size


def test_each_family_makes_the_requested_size(backend: DiffusersBackend) -> None:
    """PixArt's resolution binning is off, so 64x64 is not rendered at 256x256 and cut."""
    assert size_of(backend.generate(FOX, ignore)) == (64, 64)
    wide = replace(FOX, width=96, height=64)
    assert size_of(backend.generate(wide, ignore)) == (96, 64)


def test_each_family_honours_a_negative_prompt_and_runs_without_one(
    backend: DiffusersBackend,
) -> None:
    """PixArt failed every job without a negative prompt (None.lower()); Flux ignored one
    (true_cfg_scale was never passed)."""
    plain = backend.generate(FOX, ignore)
    assert backend.generate(replace(FOX, negative_prompt="blurry"), ignore) != plain
    assert backend.generate(FOX, ignore) == plain


def test_each_family_reports_every_step(backend: DiffusersBackend) -> None:
    calls: list[tuple[int, int]] = []
    backend.generate(replace(FOX, steps=4), lambda step, steps: calls.append((step, steps)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_each_family_stops_at_the_step_whose_callback_raises(backend: DiffusersBackend) -> None:
    class Canceled(Exception):
        pass

    calls: list[int] = []

    def on_step(step: int, steps: int) -> None:
        calls.append(step)
        if step == 2:
            raise Canceled

    with pytest.raises(Canceled):
        backend.generate(replace(FOX, steps=5), on_step)
    assert calls == [1, 2]


EXPECTED = {
    # name: (step hook, size multiple, default size, default steps, default guidance)
    "tiny-sdxl": ("callback_on_step_end", 8, 64, None, None),
    "tiny-sd2-turbo": ("callback_on_step_end", 8, 64, 1, 0.0),
    "tiny-pixart-sigma": ("callback", 16, 64, None, None),
    "tiny-flux": ("callback_on_step_end", 16, 1024, 28, 3.5),
}


def test_each_family_reports_its_hook_sizes_and_defaults(backend: DiffusersBackend) -> None:
    hook, multiple, size, steps, guidance = EXPECTED[Path(backend.model).name]
    assert backend.call_shape is not None and backend.capabilities is not None
    assert backend.call_shape.step_hook == hook
    caps = backend.capabilities
    assert (caps.size_multiple, caps.default_size) == (multiple, size)
    assert (caps.default_steps, caps.default_guidance) == (steps, guidance)


def test_a_size_the_model_cannot_make_is_refused(backend: DiffusersBackend) -> None:
    """Flux would silently render 72x72 as 64x64; the backend refuses it instead."""
    assert backend.capabilities is not None
    multiple = backend.capabilities.size_multiple
    if multiple == 8:
        pytest.skip("every size the queue accepts is a multiple of 8")
    with pytest.raises(ValueError, match=f"multiples of {multiple}"):
        backend.generate(replace(FOX, width=72, height=72), ignore)


class NoHookPipeline:
    """A pipeline with no step callback at all, as some families have."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        prompt: str,
        width: int,
        height: int,
        num_inference_steps: int,
        guidance_scale: float,
        generator: Any,
    ) -> Any:
        self.calls.append(locals())
        return None


def test_a_family_without_a_step_hook_gets_no_callback_and_no_negative_prompt() -> None:
    pipeline = NoHookPipeline()
    shape = CallShape.of(pipeline)
    assert shape.step_hook == "none"
    kwargs = call_kwargs(shape, [replace(FOX, negative_prompt="blurry")], [None], ignore, pipeline)
    assert set(kwargs) == {
        "prompt",
        "width",
        "height",
        "num_inference_steps",
        "guidance_scale",
        "generator",
    }


def test_a_family_without_a_step_hook_is_checked_around_its_call(tmp_path: Path) -> None:
    """No hook: the gate is consulted before the call (a job canceled or past its deadline
    never starts) and after it (one that came due during the call discards its image); a call
    that overruns by more than the stuck grace is the runner's wedge, which restarts the worker."""
    from gpu_worker.backends.diffusers_backend import ModelCapabilities

    class Pipeline(NoHookPipeline):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            super().__call__(*args, **kwargs)
            return SimpleNamespace(images=[Image.new("RGB", (64, 64))])

    backend = DiffusersBackend(device="cpu", model="no-hook", data_dir=tmp_path)
    pipeline = Pipeline()
    backend._pipeline = pipeline
    backend._shape = CallShape.of(NoHookPipeline())
    backend.capabilities = ModelCapabilities(8, None, None, None)
    calls: list[tuple[int, int]] = []
    assert size_of(backend.generate(FOX, lambda s, n: calls.append((s, n)))) == (64, 64)
    assert calls == [(0, 3), (3, 3)]

    class Due(Exception):
        pass

    def due_after_the_call(step: int, steps: int) -> None:
        if step == steps:
            raise Due

    with pytest.raises(Due):
        backend.generate(FOX, due_after_the_call)
    assert len(pipeline.calls) == 2
