"""What every image backend offers the worker, so the worker never knows which one runs."""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

StepCallback = Callable[[int, int], None]
"""`on_step(step, steps)`, called from the pipeline thread after each step.

It may raise (cancel, timeout) to stop the run; backends let that exception through unchanged.
"""

PreviewCallback = Callable[[int, bytes], None]
"""`on_preview(index, image)`, called from the pipeline thread just before `on_step`: a small
PNG or JPEG (at most PREVIEW_SIDE px a side) of how the index-th image of the call (0 for
`generate`) looks at this step. Best effort: a backend that cannot make one sends none."""

PREVIEW_SIDE = 128
PREVIEW_INTERVAL_S = 0.5  # a preview costs a device sync and a frame to every follower


class PreviewPacer:
    """Says at which steps a preview is due: the first step, then at most one every
    PREVIEW_INTERVAL_S, never at the last step (the image itself comes next)."""

    def __init__(self, interval_s: float = PREVIEW_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._next = 0.0

    def due(self, step: int, steps: int) -> bool:
        now = time.monotonic()
        if step >= steps or now < self._next:
            return False
        self._next = now + self._interval_s
        return True


def preview_size(width: int, height: int) -> tuple[int, int]:
    """The image's size shrunk to fit PREVIEW_SIDE, keeping its shape (never below 1 px)."""
    scale = min(1.0, PREVIEW_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class ImageRequest:
    """The parameters of one text-to-image job, already validated by the queue."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    work: float  # the job's size in megapixel-steps, as the queue counts it (gq_job_work)


class Backend(Protocol):
    """A text-to-image engine bound to one device for the life of a worker process."""

    name: str

    def load(self) -> None:
        """Load weights; blocking, called once in a thread before the first job."""
        ...

    def generate(
        self,
        request: ImageRequest,
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
    ) -> bytes:
        """Render one image and return it as PNG bytes; blocking, runs in a worker thread."""
        ...

    def generate_batch(
        self,
        requests: Sequence[ImageRequest],
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
    ) -> list[bytes]:
        """Render compatible requests (same size, steps, guidance and negative prompt; each its
        own prompt and seed) in one call that steps them together, each image the one
        `generate` would give it; PNG bytes in request order. `on_step` is called once per step
        for the whole batch; an exception from it ends the call."""
        ...
