"""Full-size SD 1.5 and SDXL on a CUDA device (issue 13 item 6): images/s per batch size, the
queue's overhead against the direct pipeline, and the GPU's idle time between jobs.

Nothing is downloaded: bench/gpu_direct.py builds each pipeline on the device from the published
architectures in bench/gpu_configs (random weights, bfloat16; bench/gpu_models.py) and calls
it directly. SD 1.5 is also saved (once: under $GPUQUEUE_BENCH_GPU_MODELS, else
~/.cache/gpuqueue-bench/gpu-models, in a folder named for the configs' hash, so a rerun loads
it and a changed config builds anew) for a real `gpuqueue worker --backend diffusers` to serve
through the queue. Batches of jobs alternate between the worker and the direct process, as in
the diffusers family; each idles while the other runs.

- images/s at batch 1, 2, 4, 8: direct calls with a list of prompts and one generator per image,
  PNG included, after one warm-up call at each batch size; batch 1 is the baseline, so the
  ratio is the speed-up of batching.
- queue overhead (SD 1.5, batch 1, the model whose short calls make any overhead largest):
  seconds per image through the queue (the batch's GPU span over its size, so the hand-offs
  count) vs the direct calls. Target: ≤ 1.02x.
- the GPU's idle time per job: complete → next claim on the database's clock, and everything
  a job costs outside its pipeline call (queue s/image - the direct pipeline call alone).

Where torch sees no CUDA device every row is SKIPPED ("no CUDA device"), which does not fail the
run. GPUQUEUE_BENCH_GPU_SMOKE=1 runs the whole family on the CPU with tiny widths, 64x64 and 2
steps: a check of the code path, not a figure.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from pathlib import Path
from typing import Any

from bench import env, gpu_models
from bench.diffusers import THREADS
from bench.env import Context
from bench.report import Figure, not_run, ratio_at_most, skipped
from bench.stats import ms, p50, percentile
from harness.children import Child

FAMILY = "gpu"
BATCHES = (1, 2, 4, 8)
STEPS = 20
GUIDANCE = 7.5
SIZES = {"sd15": 512, "sdxl": 1024}
LABELS = {"sd15": "SD 1.5", "sdxl": "SDXL"}
# Measured calls per batch size, after one warm-up call each (quick: one call each).
CALLS = {"sd15": {1: 8, 2: 4, 4: 3, 8: 2}, "sdxl": {1: 3, 2: 2, 4: 2, 8: 2}}
OVERHEAD_FAMILY = "sd15"
LIMIT_S = 600.0  # for each answer of a direct process


def smoke() -> bool:
    return bool(os.environ.get("GPUQUEUE_BENCH_GPU_SMOKE"))


def _threads() -> dict[str, str]:
    """One CPU thread each in the smoke run, as the diffusers family runs (its docstring)."""
    return dict(THREADS) if smoke() else {}


def cuda_missing() -> str | None:
    """Why this machine cannot run the family (None: it can)."""
    if smoke():
        return None
    try:
        import torch
    except ImportError:
        return "no CUDA device (torch is not installed)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _shape(family: str) -> tuple[int, int, str]:
    """(side, steps, precision) of the family's images: full size, or the smoke run's."""
    return (64, 2, "fp32 CPU smoke") if smoke() else (SIZES[family], STEPS, "bf16")


def _what(family: str) -> str:
    side, steps, precision = _shape(family)
    return f"{LABELS[family]} {side}², {steps} steps, {precision}"


def _rate_name(family: str, batch: int) -> str:
    return f"{_what(family)}: images/s at batch {batch}"


def _overhead_names() -> tuple[str, str, str]:
    what = _what(OVERHEAD_FAMILY)
    return (
        f"{what}: seconds per image through the queue (batch 1)",
        f"{what}: GPU idle between jobs, complete → next claim",
        f"{what}: GPU time outside the pipeline call, per job",
    )


def _names(family: str) -> list[str]:
    names = [_rate_name(family, b) for b in BATCHES]
    return names + (list(_overhead_names()) if family == OVERHEAD_FAMILY else [])


def models_dir(ctx: Context) -> Path:
    """Where the saved models live: one folder per version of the configs."""
    if smoke():
        return ctx.scratch / "gpu-models"
    configs = sorted(gpu_models.CONFIGS.rglob("*.json"))
    digest = hashlib.sha256(Path(gpu_models.__file__).read_bytes())  # the tokenizers, too
    for path in configs:
        digest.update(path.relative_to(gpu_models.CONFIGS).as_posix().encode())
        digest.update(path.read_bytes())
    root = os.environ.get("GPUQUEUE_BENCH_GPU_MODELS") or Path.home() / ".cache/gpuqueue-bench"
    return Path(root) / "gpu-models" / digest.hexdigest()[:12]


async def run(ctx: Context) -> list[Figure]:
    why = cuda_missing()
    if why:
        return [skipped(FAMILY, name, why) for family in SIZES for name in _names(family)]
    figures: list[Figure] = []
    for family in (OVERHEAD_FAMILY, "sdxl"):
        try:
            figures += await _family(ctx, family)
        except Exception as exc:
            env.log(f"{FAMILY} {family}: FAILED\n{traceback.format_exc()}")
            reason = f"{type(exc).__name__}: {exc}"
            figures += [not_run(FAMILY, name, reason) for name in _names(family)]
    return figures


def _command(family: str, batch: int, calls: int, seed: int, prompt: str) -> dict[str, Any]:
    side, steps, _ = _shape(family)
    return {
        "cmd": "run",
        "batch": batch,
        "calls": calls,
        "seed": seed,
        "prompt": prompt,
        "width": side,
        "height": side,
        "steps": steps,
        "guidance_scale": GUIDANCE,
    }


async def _family(ctx: Context, family: str) -> list[Figure]:
    argv = ["-m", "bench.gpu_direct", family, str(models_dir(ctx))]
    if family == OVERHEAD_FAMILY:
        argv.append("--save")
    if smoke():
        argv.append("--smoke")
    direct = env.start(ctx, f"gpu-direct-{family}", argv, env=_threads(), pipes=True)
    async with direct:
        ready = await env.ask(direct, None, LIMIT_S)
        if not ready.get("ready"):
            reason = str(ready.get("why", "the direct process could not start"))
            return [skipped(FAMILY, name, reason) for name in _names(family)]
        env.log(
            f"{FAMILY} {family}: {ready['params'] / 1e6:,.0f} M parameters on {ready['gpu']}, "
            f"built in {ready['build_s']:.1f} s, saved in {ready['save_s']:.1f} s"
        )
        figures = await _rates(ctx, family, direct, ready)
        if family == OVERHEAD_FAMILY:
            try:  # the rates above stand whatever happens to the worker
                figures += await _overhead(ctx, family, direct, Path(ready["path"]))
            except Exception as exc:
                env.log(f"{FAMILY} {family} through the queue: FAILED\n{traceback.format_exc()}")
                reason = f"{type(exc).__name__}: {exc}"
                figures += [not_run(FAMILY, name, reason) for name in _overhead_names()]
    return figures


async def _rates(ctx: Context, family: str, direct: Child, ready: dict[str, Any]) -> list[Figure]:
    rates: dict[int, float] = {}
    calls_at: dict[int, int] = {}
    for batch in BATCHES:
        await env.ask(direct, _command(family, batch, 1, 50_000, "warm"), LIMIT_S)
        calls = 1 if ctx.quick else CALLS[family][batch]
        got = await env.ask(direct, _command(family, batch, calls, 0, "rate"), LIMIT_S)
        rates[batch] = float(got["images"]) / float(got["seconds"])
        calls_at[batch] = calls
    return [
        Figure(
            FAMILY,
            _rate_name(family, batch),
            f"{calls_at[batch]} calls of {batch}",
            "images/s",
            rates[batch],
            rates[1] if batch > 1 else None,
            "batch 1" if batch > 1 else "",
            (),
            "ratio = speed-up of one call of the batch over single calls; the pipeline called "
            f"directly, PNG included; {ready['gpu']}",
        )
        for batch in BATCHES
    ]


async def _overhead(ctx: Context, family: str, direct: Child, model: Path) -> list[Figure]:
    side, steps, _ = _shape(family)
    params = {"width": side, "height": side, "steps": steps, "guidance_scale": GUIDANCE}
    rounds = 1 if ctx.quick else 3
    n = 4 if ctx.quick else 10
    queue_s = direct_s = pipeline_s = 0.0
    images = 0
    gaps: list[float] = []
    device = "cpu" if smoke() else "cuda:0"
    # The worker takes its dtype from the device (bfloat16 on an Ampere or later GPU), the
    # direct process's choice.
    worker_env = {"GPUQUEUE_MODEL": str(model), "GPUQUEUE_MAX_BATCH": "1", **_threads()}
    async with ctx.database(FAMILY) as bdb:
        worker = await env.start_worker(
            ctx, bdb, device=device, backend="diffusers", env=worker_env, limit_s=LIMIT_S
        )
        async with worker:
            await env.ask(direct, _command(family, 1, 2, 10_000, "warm"), LIMIT_S)
            await _batch(bdb, model, params, "warm", 3, 10_000)
            for rnd in range(rounds):
                prompt = f"run-{rnd}"
                got = await env.ask(direct, _command(family, 1, n, rnd * n, prompt), LIMIT_S)
                direct_s += float(got["seconds"])
                pipeline_s += float(got["pipeline_s"])
                queue_s += await _batch(bdb, model, params, prompt, n, rnd * n)
                gaps += await _gaps(bdb, prompt)
                images += n
            worker.check_alive()
    per_queue, per_direct, per_call = queue_s / images, direct_s / images, pipeline_s / images
    overhead, gap, outside = _overhead_names()
    at = f"{rounds} x {n} images"

    def pct(seconds: float) -> str:
        return f"{seconds / per_direct * 100:.2f} %"

    return [
        Figure(
            FAMILY,
            overhead,
            at,
            "s/image",
            per_queue,
            per_direct,
            "the pipeline called directly",
            (ratio_at_most(1.02),),
            "queue overhead = ratio - 1 (target ≤ 2 %); a real `gpuqueue worker --backend "
            "diffusers --max-batch 1` serving the saved random-weight model; both encode PNGs",
        ),
        Figure(
            FAMILY,
            gap,
            f"{len(gaps)} hand-offs",
            "ms",
            ms(p50(gaps)),
            None,
            "",
            (),
            f"p50 ({pct(p50(gaps))} of an image); p90 {ms(percentile(gaps, 90)):.1f} ms, "
            f"max {ms(max(gaps)):.1f} ms; database clock: excludes the PNG and the call's set-up",
        ),
        Figure(
            FAMILY,
            outside,
            at,
            "ms",
            ms(per_queue - per_call),
            None,
            "",
            (),
            f"queue s/image - the direct pipeline call alone ({per_call:.3f} s): PNG, complete, "
            f"claim and set-up, the time the GPU waits per job ({pct(per_queue - per_call)})",
        ),
    ]


async def _batch(
    bdb: env.BenchDb, model: Path, params: dict[str, Any], prompt: str, n: int, seed: int
) -> float:
    """n jobs with seeds seed, seed+1, ... put in the queue at once; returns their GPU span."""
    await env.seed(
        bdb,
        n,
        status="queued",
        prompt=prompt,
        params=params,
        seed_base=seed - 1,
        wake=True,
        model=str(model),
    )
    return await env.wait_batch(bdb, prompt, n, limit_s=LIMIT_S)


async def _gaps(bdb: env.BenchDb, prompt: str) -> list[float]:
    conn = await bdb.connect()
    try:
        rows = await env.fetch(conn, "handoff_gaps", {"prompt": prompt})
    finally:
        await conn.close()
    return [float(row["gap_s"]) for row in rows]
