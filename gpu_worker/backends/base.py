"""What every image backend offers the worker, so the worker never knows which one runs."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

StepCallback = Callable[[int, int], None]
"""`on_step(step, steps)`, called from the pipeline thread after each step.

It may raise (cancel, timeout) to stop the run; backends let that exception through unchanged.
"""


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

    def generate(self, request: ImageRequest, on_step: StepCallback) -> bytes:
        """Render one image and return it as PNG bytes; blocking, runs in a worker thread."""
        ...

    def generate_batch(
        self, requests: Sequence[ImageRequest], on_step: StepCallback
    ) -> list[bytes]:
        """Render compatible requests (same size, steps, guidance and negative prompt; each its
        own prompt and seed) in one call that steps them together, each image the one
        `generate` would give it; PNG bytes in request order. `on_step` is called once per step
        for the whole batch; an exception from it ends the call."""
        ...
