"""A full-size random-weight pipeline called directly on a CUDA device: the gpu family's ceiling.

`python -m bench.gpu_direct FAMILY MODELS_DIR [--save] [--smoke]` builds the family's pipeline
(bench/gpu_models.py) on cuda in bfloat16; with --save it also writes it to MODELS_DIR/FAMILY
for a worker to load, unless a saved copy is there already. --smoke: the tiny widths on the CPU
in float32 (how the family is exercised where no GPU is lent). It then reads commands on stdin,
one JSON object a line, and answers on stdout:

    {"cmd": "run", "batch": B, "calls": K, "seed": S, "prompt": P,
     "width": W, "height": H, "steps": N, "guidance_scale": G}
        -> {"images": B*K, "seconds": T, "pipeline_s": C}
        K pipeline calls of B images each (a list of B prompts and one CPU generator per image,
        seeds S, S+1, ..., as the worker's batches are called; batch 1 is called as the
        worker calls one job), every image encoded as PNG. T is the whole; C the pipeline
        calls alone, the device synchronised after each.
    {"cmd": "exit"}

Before it is ready it answers {"ready": true, "build_s", "save_s", "path", "gpu", "params"}, or
{"ready": false, "why": ...} when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench import gpu_models


def _answer(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def run(pipeline: Any, command: dict[str, Any], device: str) -> dict[str, Any]:
    import torch

    batch, calls, seed = int(command["batch"]), int(command["calls"]), int(command["seed"])
    prompt = str(command["prompt"])
    pipeline_s = 0.0
    started = time.perf_counter()
    for call in range(calls):
        first = seed + call * batch
        generators = [torch.Generator("cpu").manual_seed(first + i) for i in range(batch)]
        began = time.perf_counter()
        with torch.inference_mode():
            result = pipeline(
                prompt=[prompt] * batch if batch > 1 else prompt,
                width=int(command["width"]),
                height=int(command["height"]),
                num_inference_steps=int(command["steps"]),
                guidance_scale=float(command["guidance_scale"]),
                generator=generators if batch > 1 else generators[0],
            )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        pipeline_s += time.perf_counter() - began
        for image in result.images:
            image.save(io.BytesIO(), format="PNG")
    seconds = time.perf_counter() - started
    return {"images": batch * calls, "seconds": seconds, "pipeline_s": pipeline_s}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_direct")
    parser.add_argument("family", choices=gpu_models.FAMILIES)
    parser.add_argument("models", type=Path)
    parser.add_argument("--save", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    import torch
    from diffusers.utils import logging as diffusers_logging

    from gpu_worker.tiny_model import save_atomically

    diffusers_logging.set_verbosity_error()  # no progress bars, no cast notices
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.smoke:
        device, dtype, gpu = "cpu", torch.float32, "CPU (smoke: tiny widths)"
    elif not torch.cuda.is_available():
        _answer({"ready": False, "why": "no CUDA device"})
        return
    elif torch.cuda.get_device_capability(0)[0] < 8:
        # The worker would run fp16 there (pick_dtype): the two sides would differ.
        _answer({"ready": False, "why": "no bfloat16 on this GPU (before Ampere)"})
        return
    else:
        device, dtype, gpu = "cuda", torch.bfloat16, torch.cuda.get_device_name(0)
    started = time.perf_counter()
    pipeline = gpu_models.build_pipeline(args.family, device=device, dtype=dtype, tiny=args.smoke)
    pipeline.set_progress_bar_config(disable=True)
    if device == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - started
    path = args.models / args.family
    save_s = 0.0
    if args.save and not path.exists():
        started = time.perf_counter()
        save_atomically(pipeline, path)
        save_s = time.perf_counter() - started
    counts = gpu_models.parameter_counts(pipeline)
    _answer(
        {
            "ready": True,
            "build_s": build_s,
            "save_s": save_s,
            "path": str(path),
            "gpu": gpu,
            "params": sum(counts.values()),
        }
    )
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] != "run":
            return
        _answer(run(pipeline, command, device))


if __name__ == "__main__":
    main()
