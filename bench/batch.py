"""Batching (issue 13 item 4): images/s at --max-batch 1, 2 and 4, stub and tiny diffusers.

For each backend and batch size a fresh `gpuqueue worker --max-batch N` takes n compatible jobs
put in the queue at once (same size, steps and guidance; seeds differ); the rate is n over
their GPU span (first claim to last completion, database clock). Batch 1 is the baseline, so
the ratio is the speed-up of batching. The stub sleeps one delay per call (a stand-in for a GPU
whose step time hardly grows with the batch); the tiny diffusers model runs on the CPU with one
thread, as the diffusers family does, where a batch costs about its size in compute. The
default --max-batch (README: Batching) is chosen from these rows.
"""

from __future__ import annotations

from bench import env
from bench.diffusers import PARAMS as DIFFUSERS_PARAMS
from bench.diffusers import THREADS
from bench.env import Context
from bench.report import Figure

FAMILY = "batch"
SIZES = (1, 2, 4)
STUB_DELAY_S = "0.05"
STUB_PARAMS = {"width": 64, "height": 64, "steps": 4, "guidance_scale": 7.5}


async def run(ctx: Context) -> list[Figure]:
    figures: list[Figure] = []
    for backend, n in (("stub", 40 if ctx.quick else 120), ("diffusers", 12 if ctx.quick else 64)):
        rates: dict[int, float] = {}
        for size in SIZES:
            rates[size] = await _rate(ctx, backend, size, n)
        for size in SIZES:
            figures.append(
                Figure(
                    FAMILY,
                    f"{_what(backend)}: images/s at --max-batch {size}",
                    f"{n} jobs",
                    "jobs/s",
                    rates[size],
                    rates[1] if size > 1 else None,
                    "--max-batch 1" if size > 1 else "",
                    (),
                    "ratio = speed-up of batching over one job per call",
                )
            )
    return figures


def _what(backend: str) -> str:
    if backend == "stub":
        return f"stub ({STUB_DELAY_S} s per call)"
    return "tiny diffusers 64x64, 3 steps, CPU, 1 thread"


async def _rate(ctx: Context, backend: str, size: int, n: int) -> float:
    params = STUB_PARAMS if backend == "stub" else DIFFUSERS_PARAMS
    extra = {"GPUQUEUE_STUB_DELAY": STUB_DELAY_S} if backend == "stub" else dict(THREADS)
    async with ctx.database(f"{FAMILY}_{backend}_{size}") as bdb:
        worker = await env.start_worker(
            ctx,
            bdb,
            device="cpu",
            backend=backend,
            env={**extra, "GPUQUEUE_MAX_BATCH": str(size)},
            limit_s=300,
        )
        async with worker:
            warm = 2 * size
            await env.seed(bdb, warm, status="queued", prompt="warm", params=params, wake=True)
            await env.wait_batch(bdb, "warm", warm, limit_s=300)
            await env.seed(bdb, n, status="queued", prompt="run", params=params, wake=True)
            span = await env.wait_batch(bdb, "run", n, limit_s=600)
            worker.check_alive()
    return n / span
