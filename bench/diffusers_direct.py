"""The tiny diffusers pipeline called directly, no queue: the ceiling of the diffusers figure.

`python -m bench.diffusers_direct DATA_DIR` loads the tiny Stable Diffusion pipeline that the
worker would use (built under DATA_DIR/models/tiny-sd on first use), says it is ready with
its torch intra-op thread count ({"ready": true, "threads": T}), then reads commands on stdin,
one JSON object a line, and answers on stdout:

    {"cmd": "run", "n": N, "seed": S}  -> {"images": N, "seconds": T}
        N images of 64x64, 3 steps, each encoded as PNG, seeds S, S+1, ...
    {"cmd": "exit"}
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

WIDTH = HEIGHT = 64
STEPS = 3
GUIDANCE = 7.5
PROMPT = "a bench image"


def load(data_dir: Path) -> Any:
    import torch
    from diffusers import AutoPipelineForText2Image

    from gpu_worker.tiny_model import ensure_tiny_model

    source = ensure_tiny_model(data_dir)
    pipeline = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
        str(source), dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to("cpu")


def image(pipeline: Any, seed: int) -> bytes:
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        result = pipeline(
            prompt=PROMPT,
            width=WIDTH,
            height=HEIGHT,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=generator,
        )
    buffer = io.BytesIO()
    result.images[0].save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    import torch

    pipeline = load(Path(sys.argv[1]))
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] != "run":
            return
        started = time.perf_counter()
        for i in range(command["n"]):
            image(pipeline, command.get("seed", 0) + i)
        seconds = time.perf_counter() - started
        print(json.dumps({"images": command["n"], "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
