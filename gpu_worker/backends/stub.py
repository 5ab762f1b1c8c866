"""A backend that fakes a GPU: it sleeps, reports steps and writes a gradient PNG.

Its previews are placeholders: the final gradient, small, filled in from the top as the steps
go, so the preview path (worker, database, fan-out, page) is testable without torch.

It exists for load tests and demos, so it imports neither torch nor Pillow. Markers in the
prompt script the failure modes the worker must survive: `[fail]`, `[hang]`, `[stuck]` and
`[badpng]` (an output that is not a PNG) and `[badargs]` (a TypeError, as a pipeline raises
for an argument it cannot take).
"""

import functools
import hashlib
import itertools
import threading
import time
from collections.abc import Sequence
from typing import NoReturn

from gpu_worker.backends.base import (
    ImageRequest,
    PreviewCallback,
    PreviewPacer,
    StepCallback,
    preview_size,
)
from gpu_worker.png import FILTER_NONE, FILTER_UP, encode_rgb, encode_scanlines
from queueing.config import Settings

HANG_STEP_S = 0.05
NOT_A_PNG = b"GIF89a: the stub backend's output for a [badpng] prompt"


class StubFailure(RuntimeError):
    """Raised on purpose for a `[fail]` prompt, to exercise the error and retry paths."""


class StubBackend:
    """Sleeps `delay` seconds per image (GPUQUEUE_STUB_DELAY) plus `delay_per_work` per
    megapixel-step of it (GPUQUEUE_STUB_DELAY_PER_WORK_S), split evenly across the steps."""

    name = "stub"

    def __init__(
        self,
        delay: float = Settings.stub_delay_s,
        delay_per_work: float = Settings.stub_delay_per_work_s,
    ) -> None:
        self.delay = delay
        self.delay_per_work = delay_per_work

    def load(self) -> None:
        """Nothing to load; present to satisfy the Backend protocol."""

    def runs_instantly(self, requests: Sequence[ImageRequest]) -> bool:
        """No delay and no marker that blocks: the call returns at once, so the worker makes
        it on its event loop instead of handing it to the pipeline thread."""
        return not (self.delay or self.delay_per_work) and not any(
            "[hang]" in r.prompt or "[stuck]" in r.prompt for r in requests
        )

    def generate(
        self,
        request: ImageRequest,
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
    ) -> bytes:
        """Run the fake steps, then return a PNG that depends only on prompt and seed."""
        steps = request.steps
        if "[stuck]" in request.prompt:
            _block_forever()
        if "[hang]" in request.prompt:
            _hang(steps, on_step)
        pause = (self.delay + self.delay_per_work * request.work) / max(steps, 1)
        pacer = PreviewPacer()
        for step in range(1, steps + 1):
            if pause:
                time.sleep(pause)
            _send_previews([request], step, pacer, on_preview)
            on_step(step, steps)
            _fail_on_purpose(request.prompt)
        if "[badpng]" in request.prompt:
            return NOT_A_PNG
        return render_png(request.prompt, request.seed, request.width, request.height)

    def generate_batch(
        self,
        requests: Sequence[ImageRequest],
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
    ) -> list[bytes]:
        """One delay for the whole batch (a GPU steps a batch together); the markers of any
        member act on the whole call, as a bad request would in a real pipeline call."""
        head = requests[0]
        steps = head.steps
        prompts = [r.prompt for r in requests]
        if any("[stuck]" in p for p in prompts):
            _block_forever()
        if any("[hang]" in p for p in prompts):
            _hang(steps, on_step)
        pause = (self.delay + self.delay_per_work * head.work) / max(steps, 1)
        pacer = PreviewPacer()
        for step in range(1, steps + 1):
            if pause:
                time.sleep(pause)
            _send_previews(requests, step, pacer, on_preview)
            on_step(step, steps)
            for prompt in prompts:
                _fail_on_purpose(prompt)
        return [
            NOT_A_PNG if "[badpng]" in r.prompt else render_png(r.prompt, r.seed, r.width, r.height)
            for r in requests
        ]


def _send_previews(
    requests: Sequence[ImageRequest],
    step: int,
    pacer: PreviewPacer,
    on_preview: PreviewCallback | None,
) -> None:
    if on_preview is None or not pacer.due(step, requests[0].steps):
        return
    for index, request in enumerate(requests):
        on_preview(index, preview_png(request, step))


def _fail_on_purpose(prompt: str) -> None:
    if "[fail]" in prompt:
        raise StubFailure("the stub backend failed on purpose: the prompt contains [fail]")
    if "[badargs]" in prompt:
        raise TypeError("the stub backend cannot take this request: the prompt contains [badargs]")


def _block_forever() -> NoReturn:
    """Wedge the thread without ever calling back, so only killing the process ends it."""
    while True:
        threading.Event().wait()


def _hang(steps: int, on_step: StepCallback) -> NoReturn:
    """Step forever; the callback is the only way out, as with a deadline or a cancel."""
    step = 0
    while True:
        time.sleep(HANG_STEP_S)
        step += 1
        on_step(min(step, steps), steps)


@functools.lru_cache(maxsize=64)
def render_png(prompt: str, seed: int, width: int, height: int) -> bytes:
    """A colour gradient whose end colours are drawn from a hash of prompt and seed, the last
    few kept (a load test repeats its request: a render costs a tenth of a no-op job).

    Only green changes down the image, so every row after the first is written as its change
    from the row above (PNG's Up filter): a few hundred bytes whatever the prompt, where plain
    rows took up to 11 kB at 64x64, which PostgreSQL then stored out of line and tried to
    compress, for a no-op job more work than its whole transition.
    """
    digest = _digest(prompt, seed)
    greens = _ramp(digest[4], digest[5], height)
    first = _gradient_rows(digest, width, 1)[0]
    changes = (
        FILTER_UP + bytes((0, (below - above) & 0xFF, 0)) * width
        for above, below in itertools.pairwise(greens)
    )
    return encode_scanlines(width, height, itertools.chain([FILTER_NONE + first], changes))


def preview_png(request: ImageRequest, step: int) -> bytes:
    """The placeholder preview at `step`: the final gradient at preview size, its rows shown
    down to the share of the steps done, the rest mid grey."""
    width, height = preview_size(request.width, request.height)
    rows = _gradient_rows(_digest(request.prompt, request.seed), width, height)
    shown = height * step // max(request.steps, 1)
    grey = bytes((128,)) * (width * 3)
    return encode_rgb(width, height, rows[:shown] + [grey] * (height - shown))


def _digest(prompt: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()


def _gradient_rows(digest: bytes, width: int, height: int) -> list[bytes]:
    """Red and blue ramp across, green ramps down; three strided writes over the whole image
    (not a write per row), so a no-op job's image costs little next to its database work."""
    pixels = bytearray(width * height * 3)
    pixels[0::3] = _ramp(digest[0], digest[1], width) * height
    pixels[2::3] = _ramp(digest[2], digest[3], width) * height
    pixels[1::3] = b"".join(
        bytes((green,)) * width for green in _ramp(digest[4], digest[5], height)
    )
    row = width * 3
    return [bytes(pixels[y * row : (y + 1) * row]) for y in range(height)]


def _ramp(start: int, end: int, length: int) -> bytes:
    """`length` bytes going evenly from `start` to `end`."""
    last = max(length - 1, 1)
    return bytes(start + (end - start) * i // last for i in range(length))
