"""The peer: PgQueuer's no-op throughput beside ours, on the same database, in the same minutes.

Ours: the real worker process (`gpuqueue worker --backend stub`, 0 s) draining a batch of jobs
put in the queue at once. PgQueuer: its own benchmark's shape (bench/pgqueuer_peer.py), with one
dequeuer (like our one worker per GPU) and with five (its benchmark's default). Rounds alternate.

What each does per job:
- gpuqueue: claim one job under the device's GPU advisory lock (taken and released per job),
  a fencing claim_id, two transitions each with an event row under the global event lock (seq
  order = commit order), the message metadata deep-merged twice, two NOTIFYs, the PNG stored in
  the complete transaction; live positions are computable at any moment.
- PgQueuer: claims and completes in batches of 10, buffers the completions into its log table,
  one NOTIFY per enqueue batch; no GPU lock, no per-transition events, no positions, no message.
"""

from __future__ import annotations

import json

from bench import env
from bench.dispatch import PARAMS, Loop
from bench.env import Context
from bench.report import Figure

FAMILY = "peer"
DEVICE = "bench-peer"
PEER = "PgQueuer 1.6.0"


async def run(ctx: Context) -> list[Figure]:
    rounds = 2
    n = 200 if ctx.quick else 400
    seconds = 2.0 if ctx.quick else 4.0
    ours = Loop()
    peer: dict[int, list[dict[str, float]]] = {1: [], 5: []}
    async with ctx.database(FAMILY) as bdb:
        child = await env.start_worker(
            ctx, bdb, device=DEVICE, backend="stub", env={"GPUQUEUE_STUB_DELAY": "0"}
        )
        async with child:
            await env.seed(bdb, 200, status="queued", prompt="warm", params=PARAMS, wake=True)
            await env.wait_batch(bdb, "warm", 200, limit_s=120)
            for rnd in range(rounds):
                prompt = f"run-{rnd}"
                await env.seed(bdb, n, status="queued", prompt=prompt, params=PARAMS, wake=True)
                ours.add(Loop(n, await env.wait_batch(bdb, prompt, n, limit_s=300)))
                for result in await _pgqueuer(ctx, bdb.url, seconds):
                    peer[int(result["dequeuers"])].append(result)
            child.check_alive()
    figures = []
    for dequeuers, results in peer.items():
        jobs = sum(r["jobs"] for r in results)
        rate = jobs / sum(r["seconds"] for r in results)
        label = "like our one worker" if dequeuers == 1 else "its benchmark's default"
        figures.append(
            Figure(
                FAMILY,
                f"peer: no-op throughput, {PEER} with {dequeuers} dequeuer(s)",
                f"1 enqueuer x 10, {dequeuers} dequeuer(s) x 10 ({label})",
                "jobs/s",
                ours.rate,
                rate,
                PEER,
                (),
                f"ours: the real worker process (stub, 0 s), {rounds} x {n} jobs; peer: psycopg "
                f"driver, {rounds} x {seconds:g} s; ours does far more per job (bench/peer.py)",
            )
        )
    return figures


async def _pgqueuer(ctx: Context, url: str, seconds: float) -> list[dict[str, float]]:
    child = env.start(
        ctx,
        "pgqueuer",
        [
            "-m",
            "bench.pgqueuer_peer",
            url,
            "--dequeuers",
            "1",
            "5",
            "--seconds",
            str(seconds),
            "--rounds",
            "1",
        ],
        pipes=True,
    )
    lines: list[str] = []
    async with child:
        while (line := await child.read_line(300.0)) is not None:
            lines.append(line)
        code = await child.wait()
    if code != 0:
        raise RuntimeError(f"the PgQueuer run failed ({code}):\n{child.log_tail()}")
    return [json.loads(line) for line in lines if line]
