"""Tiny diffusers: seconds per 64x64 image (3 steps, CPU) through the queue vs called directly.

Through the queue: `gpuqueue worker --backend diffusers` (the tiny randomly initialised Stable
Diffusion pipeline it builds on first use) takes batches of jobs put in the queue at once; its
seconds per image are the batch's GPU span (first claim to last completion, database clock)
over the batch size, so the hand-offs between jobs count as queue overhead. Directly:
bench/diffusers_direct.py calls the same pipeline with the same arguments and encodes each PNG,
back to back. Batches alternate between the two processes; each idles while the other runs.
Many short rounds, each side first in every other one: the machine's other load drifts over
seconds, and a round pair sees the same drift on both sides. The wait for a queue round polls
slowly (its span is the database's clock, not the poll's), so the bench's own queries do not
load the CPU while the worker runs and not while the direct process does.

Both run with OMP_NUM_THREADS=1: with torch's default of one thread per core, a 2-core machine
that is busy with anything else (here: the event loop, PostgreSQL) spends most of each step in
OpenMP barriers (measured: 2.7 s instead of 0.2 s per image under load). Each says how many
intra-op threads torch gave it (the worker in its log, at load); a mismatch stops the family.

Memory: the worker's RSS after the warm-up jobs, then after the measured ones.
"""

from __future__ import annotations

import re
import statistics

from bench import env
from bench.env import Context
from bench.report import Figure, at_most, ratio_at_most

FAMILY = "diffusers"
DEVICE = "cpu"
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The direct process calls the pipeline once per image: the queue does too (batching: `batch`).
ONE_PER_CALL = {**THREADS, "GPUQUEUE_MAX_BATCH": "1"}
LIMIT_S = 600.0  # for each answer of the direct pipeline process
POLL_S = 0.25  # how often the wait for a queue round looks (the span is the database's)
THREADS_LOGGED = re.compile(r"torch runs the pipeline on (\d+) intra-op thread")


PARAMS = {"width": 64, "height": 64, "steps": 3, "guidance_scale": 7.5}


async def run(ctx: Context) -> list[Figure]:
    warm = 5 if ctx.quick else 10
    rounds, n = (4, 5) if ctx.quick else (10, 10)
    data_dir = ctx.scratch / "data"
    queue_s = direct_s = 0.0
    ratios: list[float] = []
    rss: list[float] = []
    async with ctx.database(FAMILY) as bdb:
        direct = env.start(
            ctx,
            "diffusers-direct",
            ["-m", "bench.diffusers_direct", str(data_dir)],
            env=THREADS,
            pipes=True,
        )
        async with direct:
            ready = await env.ask(direct, None, LIMIT_S)  # the model is built and loaded
            await env.ask(direct, {"cmd": "run", "n": warm, "seed": 10_000}, LIMIT_S)
            worker = await env.start_worker(
                ctx, bdb, device=DEVICE, backend="diffusers", env=ONE_PER_CALL, limit_s=300
            )
            async with worker:
                threads = _same_threads(int(ready["threads"]), worker.log())
                await _batch(bdb, "warm", warm, 10_000)
                rss.append(worker.rss_kib() / 1024)
                for rnd in range(rounds):
                    seed = rnd * n
                    ask = {"cmd": "run", "n": n, "seed": seed}
                    if rnd % 2:
                        queued = await _batch(bdb, f"run-{rnd}", n, seed)
                        called = float((await env.ask(direct, ask, LIMIT_S))["seconds"])
                    else:
                        called = float((await env.ask(direct, ask, LIMIT_S))["seconds"])
                        queued = await _batch(bdb, f"run-{rnd}", n, seed)
                    queue_s, direct_s = queue_s + queued, direct_s + called
                    ratios.append(queued / called)
                    rss.append(worker.rss_kib() / 1024)
                worker.check_alive()
    images = rounds * n
    per_queue, per_direct = queue_s / images, direct_s / images
    growth = (rss[-1] / rss[0] - 1) * 100
    return [
        Figure(
            FAMILY,
            "tiny diffusers, seconds per 64x64 image (3 steps, CPU)",
            f"{rounds} x {n} images",
            "s/image",
            per_queue,
            per_direct,
            "the pipeline called directly",
            (ratio_at_most(1.05),),
            f"queue overhead = ratio - 1; rounds' ratios: median {statistics.median(ratios):.2f}x,"
            f" {min(ratios):.2f}x-{max(ratios):.2f}x; {threads} torch intra-op thread(s) in"
            " both (OMP_NUM_THREADS=1, see bench/README.md)",
        ),
        Figure(
            FAMILY,
            "worker RSS growth over tiny-diffusers jobs, after warm-up",
            f"{images} jobs",
            "%",
            growth,
            None,
            "",
            (at_most(5.0, "%"),),
            f"RSS {rss[0]:.1f} MiB after {warm} warm-up jobs, {rss[-1]:.1f} MiB after"
            f" {images} more (largest {max(rss):.1f})",
        ),
    ]


async def _batch(bdb: env.BenchDb, prompt: str, n: int, seed: int) -> float:
    """n jobs with seeds seed, seed+1, ... put in the queue at once; returns their GPU span."""
    await env.seed(
        bdb, n, status="queued", prompt=prompt, params=PARAMS, seed_base=seed - 1, wake=True
    )
    return await env.wait_batch(bdb, prompt, n, limit_s=600, interval_s=POLL_S)


def _same_threads(direct: int, worker_log: str) -> int:
    """The intra-op thread count of both sides; a mismatch would make the figure unfair."""
    found = THREADS_LOGGED.findall(worker_log)
    if not found or int(found[-1]) != direct:
        raise RuntimeError(
            f"torch intra-op threads differ: direct {direct}, worker {found[-1] if found else '?'}"
        )
    return direct
