"""Positions: one job's queue position, and every position of the queue in one query.

The table holds 1,000,000 finished jobs (100,000 with --quick) and the queue grows through the
sizes in turn; 10 % of the queued jobs have priority 1, so both range counts do work. One job's
position is sampled over jobs drawn uniformly from the queue, so p50 is a job in the middle and
p99 one near the back. Ours goes through queueing.positions (the job looked up by id, then
gq_queue_position); the ceiling is the raw count with the job's sort keys already known.
"""

from __future__ import annotations

import random
import time
from typing import Any

from bench import env
from bench.env import Context
from bench.queries import BENCH_SQL
from bench.report import Figure, at_most, ratio_at_most
from bench.stats import ms, p50, p99
from queueing import db, positions

FAMILY = "positions"
CEILING_ONE = "raw count(*) over jobs_queued_idx"
CEILING_ALL = "raw row_number() over jobs_queued_idx"


async def run(ctx: Context) -> list[Figure]:
    finished = 100_000 if ctx.quick else 1_000_000
    sizes = (100, 1_000, 10_000) if ctx.quick else (100, 10_000, 100_000)
    figures: list[Figure] = []
    async with ctx.database(FAMILY) as bdb:
        env.log(f"positions: seeding {finished:,} finished jobs")
        seeded_s = await env.seed(bdb, finished, status="complete", connections=3)
        ctx.notes.append(
            f"positions: {finished:,} finished jobs (with their messages, without events) were "
            f"seeded in {seeded_s:.0f} s (3 connections, foreign-key triggers off)."
        )
        env.log(f"positions: seeded in {seeded_s:.0f} s")
        conn = await bdb.connect()
        try:
            queued = 0
            for size in sizes:
                await env.seed(bdb, size - queued, status="queued", high_priority_share=0.1)
                queued = size
                await env.vacuum(bdb)
                figures += await _one_job(ctx, conn, size, finished)
                figures += await _all_positions(ctx, conn, size, finished)
        finally:
            await conn.close()
    return figures


def _at(size: int, finished: int) -> str:
    return f"{size:,} queued, {finished:,} finished"


async def _timed(conn: db.Connection, query: str, params: dict[str, Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    cur = await conn.execute(query, params, prepare=False)
    rows = await cur.fetchall()
    return time.perf_counter() - started, rows


async def _one_job(ctx: Context, conn: db.Connection, size: int, finished: int) -> list[Figure]:
    keys = await env.fetch(conn, "queued_keys")
    samples = 100 if ctx.quick else (200 if size >= 100_000 else 300)
    rng = random.Random(size)
    picks = [rng.choice(keys) for _ in range(samples)]
    ours: list[float] = []
    ceiling: list[float] = []
    mismatches = 0
    ceiling_sql = BENCH_SQL["position_one"]
    for i, key in enumerate([*picks[:10], *picks]):  # the first 10 warm the caches
        params = {"priority": key["priority"], "queue_seq": key["queue_seq"]}
        # Alternate which goes first, so neither always runs on the warmer cache.
        if i % 2:
            t_ceiling, rows = await _timed(conn, ceiling_sql, params)
        started = time.perf_counter()
        position = await positions.job_position(conn, key["job_id"])
        t_ours = time.perf_counter() - started
        if not i % 2:
            t_ceiling, rows = await _timed(conn, ceiling_sql, params)
        if position != rows[0]["queue_position"]:
            mismatches += 1
        if i >= 10:
            ours.append(t_ours)
            ceiling.append(t_ceiling)
    note = f"{samples} jobs drawn uniformly from the queue"
    if mismatches:
        note += f"; {mismatches} positions DIFFERED from the raw count"
    at = _at(size, finished)
    p50_targets = (ratio_at_most(1.5), *((at_most(1.0, "ms"),) if size == 10_000 else ()))
    return [
        Figure(
            FAMILY,
            "one job's queue position p50",
            at,
            "ms",
            ms(p50(ours)),
            ms(p50(ceiling)),
            CEILING_ONE,
            p50_targets,
            note,
        ),
        Figure(
            FAMILY,
            "one job's queue position p99",
            at,
            "ms",
            ms(p99(ours)),
            ms(p99(ceiling)),
            CEILING_ONE,
            (ratio_at_most(1.5),),
            note,
        ),
    ]


async def _all_positions(
    ctx: Context, conn: db.Connection, size: int, finished: int
) -> list[Figure]:
    """Ours: queueing.positions.positions_of over every queued job, the query the WebSocket
    fan-out runs for its position pass (every followed queued job ranked in one statement)."""
    samples = 6 if size >= 100_000 else 12 if size >= 10_000 else 20
    if ctx.quick:
        samples //= 2
    ours: list[float] = []
    ceiling: list[float] = []
    ids = [r["job_id"] for r in await env.fetch(conn, "queued_keys")]
    ceiling_sql = BENCH_SQL["position_all"]
    for i in range(samples + 2):  # two warm-up rounds
        started = time.perf_counter()
        got = await positions.positions_of(conn, ids)
        t_ours = time.perf_counter() - started
        t_ceiling, raw = await _timed(conn, ceiling_sql, {})
        if len(raw) != size or len(got) != size:
            raise AssertionError(f"{len(got)} and {len(raw)} positions returned, not {size}")
        if i >= 2:
            ours.append(t_ours)
            ceiling.append(t_ceiling)
    note = (
        f"ours: queueing.positions.positions_of(every queued id), the fan-out's position "
        f"pass; {samples} samples"
    )
    targets = {10_000: (at_most(10.0, "ms"),), 100_000: (at_most(100.0, "ms"),)}.get(size, ())
    at = _at(size, finished)
    return [
        Figure(
            FAMILY,
            "all positions, one query p50",
            at,
            "ms",
            ms(p50(ours)),
            ms(p50(ceiling)),
            CEILING_ALL,
            targets,
            note,
        ),
        Figure(
            FAMILY,
            "all positions, one query p99",
            at,
            "ms",
            ms(p99(ours)),
            ms(p99(ceiling)),
            CEILING_ALL,
            (),
            note,
        ),
    ]
