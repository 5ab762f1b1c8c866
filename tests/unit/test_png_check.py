"""The check every backend output passes before it is stored (issue 10, item 7)."""

from __future__ import annotations

from gpu_worker import png
from gpu_worker.backends import ImageRequest
from gpu_worker.backends.stub import StubBackend, render_png


def test_a_real_png_passes_and_anything_else_is_named() -> None:
    assert png.problem(render_png("a fox", 1, 8, 8)) is None
    assert png.problem(b"GIF89a") == "6 bytes without the PNG signature (they start b'GIF89a')"
    assert png.problem(None) == "expected bytes, got NoneType"
    assert png.problem(b"\x89PNG\r\n\x1a\n" + bytes(8)) == (
        "the PNG signature is not followed by an IHDR chunk"
    )


def test_a_badpng_prompt_makes_the_stub_return_something_that_is_no_png() -> None:
    request = ImageRequest("[badpng] a fox", None, 8, 8, 2, 1.0, 0, 0.0)
    output = StubBackend(delay=0).generate(request, lambda step, steps: None)
    assert png.problem(output) is not None
