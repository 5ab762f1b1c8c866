"""The peer: PgQueuer's no-op throughput beside ours, on the same database, in the same minutes.

Ours: the real worker process (`gpuqueue worker --backend stub`, 0 s) draining a batch of jobs
put in the queue at once, one job per claim and then with `--max-batch 10` (compatible no-op
jobs: ten claimed in one statement, their completions, set-based, and the next claim in one
statement).
PgQueuer: its own benchmark's shape (bench/pgqueuer_peer.py), with one dequeuer (like our one
worker per GPU) and with five (its benchmark's default), claiming ten at a time (its benchmark's
batch), and with one dequeuer claiming one at a time (as ours does without --max-batch). Rounds
alternate.

What each does per job:
- gpuqueue: claim one job under the device's GPU advisory lock (taken and released per job),
  a fencing claim_id, two transitions each with an event row under the global event lock (seq
  order = commit order), the message metadata deep-merged twice, two NOTIFYs, the PNG stored in
  the complete transaction; live positions are computable at any moment.
- PgQueuer: claims and completes in batches of 10 (or 1), buffers the completions into its log
  table, one NOTIFY per enqueue batch; no GPU lock, no per-transition events, no positions, no
  message.
"""

from __future__ import annotations

import json

from bench import env
from bench.dispatch import CEILING, PARAMS, Loop
from bench.env import Context
from bench.report import Figure, ratio_at_least
from bench.worker import ceiling_beside

FAMILY = "peer"
DEVICE = "bench-peer"
PEER = "PgQueuer 1.6.0"
BATCH = 10  # PgQueuer's benchmark claims its jobs ten at a time
PEER_RUNS = ((1, BATCH), (5, BATCH), (1, 1))  # (dequeuers, jobs a claim)


async def run(ctx: Context) -> list[Figure]:
    rounds = 2
    n = 200 if ctx.quick else 400
    seconds = 2.0 if ctx.quick else 4.0
    ours = {1: Loop(), BATCH: Loop()}
    ceiling = Loop()
    peer: dict[tuple[int, int], list[dict[str, float]]] = {run: [] for run in PEER_RUNS}
    async with ctx.database(FAMILY) as bdb:
        for batch, loop in ours.items():
            device = f"{DEVICE}-{batch}"
            child = await env.start_worker(
                ctx,
                bdb,
                device=device,
                backend="stub",
                env={"GPUQUEUE_STUB_DELAY": "0", "GPUQUEUE_MAX_BATCH": str(batch)},
            )
            async with child:
                warm = f"warm-{batch}"
                await env.seed(bdb, 200, status="queued", prompt=warm, params=PARAMS, wake=True)
                await env.wait_batch(bdb, warm, 200, limit_s=120)
                for rnd in range(rounds):
                    prompt = f"run-{batch}-{rnd}"
                    await env.seed(bdb, n, status="queued", prompt=prompt, params=PARAMS, wake=True)
                    loop.add(Loop(n, await env.wait_batch(bdb, prompt, n, limit_s=300)))
                    if batch == 1:
                        ceiling.add(await ceiling_beside(bdb, n, device, rnd))
                    for result in await _pgqueuer(ctx, bdb.url, seconds):
                        peer[int(result["dequeuers"]), int(result["batch"])].append(result)
                child.check_alive()
    rates = {
        run: sum(r["jobs"] for r in results) / sum(r["seconds"] for r in results)
        for run, results in peer.items()
    }
    at = f"1 enqueuer x {BATCH}, %d dequeuer(s) x %d (%s)"
    note = (
        f"ours: the real worker process (stub, 0 s), {rounds} x {n} jobs%s; peer: psycopg "
        f"driver, {rounds * len(ours)} x {seconds:g} s a shape, its rounds alternating with ours; "
        "ours does far more per job (bench/peer.py)"
    )
    one_by_one = " claimed one at a time"
    batched = f" claimed up to {BATCH} at a time (--max-batch {BATCH})"
    return [
        Figure(
            FAMILY,
            f"peer: no-op throughput, ours one job per claim vs {PEER} with 1 dequeuer",
            at % (1, BATCH, "like our one worker, its benchmark's batch"),
            "jobs/s",
            ours[1].rate,
            rates[1, BATCH],
            PEER,
            (ratio_at_least(0.5),),
            note % one_by_one,
        ),
        Figure(
            FAMILY,
            f"peer: no-op throughput, ours one job per claim vs {PEER} with 1 dequeuer at batch 1",
            at % (1, 1, "one job a claim on both sides"),
            "jobs/s",
            ours[1].rate,
            rates[1, 1],
            PEER,
            (ratio_at_least(0.5),),
            (note % one_by_one) + "; like for like: PgQueuer too claims one job at a time "
            "(`run(batch_size=1)`), still buffering its completions",
        ),
        Figure(
            FAMILY,
            f"peer: no-op throughput, {CEILING} vs {PEER} with 1 dequeuer",
            at % (1, BATCH, "like our one worker, its benchmark's batch"),
            "jobs/s",
            ceiling.rate,
            rates[1, BATCH],
            PEER,
            (),
            f"context for the first batch-1 row: one job per claim and a commit per job, "
            f"{rounds} x {n} jobs on our worker's GPU, interleaved with ours; where this is below "
            "0.5x, that row's target lies above the raw loop itself",
        ),
        Figure(
            FAMILY,
            f"peer: no-op throughput, ours --max-batch {BATCH} vs {PEER} with 1 dequeuer",
            at % (1, BATCH, "like our one worker, its benchmark's batch"),
            "jobs/s",
            ours[BATCH].rate,
            rates[1, BATCH],
            PEER,
            (ratio_at_least(1.0),),
            note % batched,
        ),
        Figure(
            FAMILY,
            f"peer: no-op throughput, ours --max-batch {BATCH} vs {PEER} with 5 dequeuers",
            at % (5, BATCH, "its benchmark's default"),
            "jobs/s",
            ours[BATCH].rate,
            rates[5, BATCH],
            PEER,
            (),
            note % batched,
        ),
    ]


async def _pgqueuer(ctx: Context, url: str, seconds: float) -> list[dict[str, float]]:
    child = env.start(
        ctx,
        "pgqueuer",
        [
            "-m",
            "bench.pgqueuer_peer",
            url,
            "--runs",
            *(f"{dequeuers}x{batch}" for dequeuers, batch in PEER_RUNS),
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
