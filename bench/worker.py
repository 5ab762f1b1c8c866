"""The real worker process: `gpuqueue worker --backend stub` with GPUQUEUE_STUB_DELAY=0.

Throughput: jobs are put in the queue while the worker is idle and listening; the rate is the
batch over its GPU span (first claim's start to last completion, from the database's clock).
Memory: the worker's RSS after a warm-up batch, then after 1,000 more jobs.
The ceiling beside the throughput is the raw claim+complete loop (same as the dispatch family),
measured in this family's database in the same minute.
"""

from __future__ import annotations

from bench import env
from bench.dispatch import CEILING, PARAMS, Loop, ceiling_loop
from bench.env import BenchDb, Context
from bench.report import Figure, at_most, ratio_at_least
from queueing.config import Settings

FAMILY = "worker"
DEVICE = "bench-stub"
HOST = Settings.from_env().host_id  # the worker's host: the child inherits this environment


async def ceiling_beside(bdb: BenchDb, n: int, device: str, rnd: int) -> Loop:
    """n fresh jobs through the raw loop on an idle worker's GPU (`device` on this host).

    The raw loop holds that GPU's lock, so the worker's claims find the GPU busy, and the queue
    empty after: the ceiling runs in the worker's database, between its rounds.
    """
    await env.seed(bdb, n, status="queued", prompt=f"ceiling-{rnd}", params=PARAMS)
    return await ceiling_loop(bdb, n, device, HOST)


async def run(ctx: Context) -> list[Figure]:
    rounds = 3 if ctx.quick else 4
    n = 150 if ctx.quick else 300
    warm = 200
    ours, ceiling = Loop(), Loop()
    rss: list[float] = []
    async with ctx.database(FAMILY) as bdb:
        child = await env.start_worker(
            ctx, bdb, device=DEVICE, backend="stub", env={"GPUQUEUE_STUB_DELAY": "0"}
        )
        async with child:
            await env.seed(bdb, warm, status="queued", prompt="warm", params=PARAMS, wake=True)
            await env.wait_batch(bdb, "warm", warm, limit_s=120)
            rss.append(child.rss_kib() / 1024)
            for rnd in range(rounds):
                prompt = f"run-{rnd}"
                await env.seed(bdb, n, status="queued", prompt=prompt, params=PARAMS, wake=True)
                span = await env.wait_batch(bdb, prompt, n, limit_s=300)
                ours.add(Loop(n, span))
                rss.append(child.rss_kib() / 1024)
                ceiling.add(await ceiling_beside(bdb, n, DEVICE, rnd))
            child.check_alive()
    growth = (rss[-1] / rss[0] - 1) * 100
    total = rounds * n
    return [
        Figure(
            FAMILY,
            "dispatch no-op jobs: real worker process (stub, 0 s)",
            f"{rounds} x {n:,} jobs",
            "jobs/s",
            ours.rate,
            ceiling.rate,
            CEILING,
            (ratio_at_least(0.8),),
            "`gpuqueue worker --backend stub`, default settings, INFO logging to a file; "
            "rate = jobs / (last completion - first claim), database clock; rounds "
            "interleaved with the ceiling's; each completion carries the next claim",
        ),
        Figure(
            FAMILY,
            "worker RSS growth over stub jobs, after warm-up",
            f"{total:,} jobs",
            "%",
            growth,
            None,
            "",
            (at_most(5.0, "%"),),
            f"RSS {rss[0]:.1f} MiB after {warm} warm-up jobs, then "
            f"{' → '.join(f'{r:.1f}' for r in rss[1:])} MiB after each {n:,}",
        ),
    ]
