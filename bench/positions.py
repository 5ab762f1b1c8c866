"""Positions: one job's queue position and ETA, and every position of the queue in one pass.

The table holds 1,000,000 finished jobs (100,000 with --quick) and the queue grows through the
sizes in turn; 10 % of the queued jobs have priority 1, so both range counts do work, and their
fair-share tags interleave eight users' jobs (bench/sql/seed.sql). One job is sampled over jobs
drawn uniformly from the queue, so p50 is a job in the middle and p99 one near the back.

Ours is the product's path in both figures, with the web process's queue order
(web/live/placing.py Placing, loaded after each seed as a web process started then would load
it: the seeded jobs have no events to follow). One job: queueing.jobs.get_job with that placer,
what GET /api/jobs/{id} runs (the job's JSON, its position and the work ahead from the order,
then eta_s from the ETA model, passed in as the web server's one-second cache does; a
registered worker session and the finished jobs' run times make that model real). Every
position: Following.places for every queued job, the fan-out's position pass following the one
conversation all the queued jobs are in (no SQL), each pass after a step of the queue (Churn:
claims at the head, enqueues at the tail), the moves its ranks follow. The ceilings are raw
counts and a raw row_number() over the same index, with the job's sort keys already known;
the all-positions rows also show the window query the fan-out ran before
(bench/sql/positions_before.sql).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from typing import Any, cast

from bench import env
from bench.env import BenchDb, Context
from bench.queries import BENCH_SQL
from bench.report import Figure, at_most, ratio_at_most
from bench.stats import ms, p50, p99
from queueing import db, jobs, positions, workers
from queueing.config import BUILTIN_MODEL
from queueing.eta import EtaModel
from queueing.queue_order import Followed, Keys, QueueOrder
from web.live.placing import Placing

FAMILY = "positions"
CEILING_ONE = "raw count(*) over jobs_queued_idx"
CEILING_ALL = "raw row_number() over jobs_queued_idx"
HOST = "bench-host"
# A 512 x 512 image at 20 steps: 5.2 megapixel-steps of work per job.
PARAMS = {"width": 512, "height": 512, "steps": 20}


CHURN = 10  # claims at the head and enqueues at the tail between two timed passes


class Churn:
    """What moves the queue between two of the fan-out's passes: CHURN claims at its head and
    CHURN enqueues at its tail, applied to the order as their events are, so that each timed
    pass is the fan-out's after such a step (its ranks moved by the changes, the claimed jobs
    no longer followed). Undone step by step at the end, so that the order is the seeded queue
    again for the check against SQL."""

    def __init__(self, order: QueueOrder, in_claim_order: list[uuid.UUID]) -> None:
        self._order = order
        self._queue = deque(in_claim_order)  # the queue's jobs in claim order
        tail = order.keys_of(in_claim_order[-1])
        assert tail is not None
        self._tail = tail
        self._steps: list[tuple[list[Keys], list[Keys]]] = []

    def step(self) -> tuple[set[uuid.UUID], list[uuid.UUID]]:
        """One step: the jobs claimed, and those enqueued."""
        taken = [self._queue.popleft() for _ in range(min(CHURN, len(self._queue)))]
        claimed = [cast(Keys, self._order.keys_of(job_id)) for job_id in taken]
        n = CHURN * len(self._steps)
        added = [
            self._tail._replace(
                job_id=uuid.uuid4(),
                start_tag=self._tail.start_tag + 1 + n + i,
                queue_seq=self._tail.queue_seq + 1 + n + i,
            )
            for i in range(CHURN)
        ]
        for keys in claimed:
            self._order.apply("processing", keys.job_id, keys)
        for keys in added:
            self._order.apply("queued", keys.job_id, keys)
            self._queue.append(keys.job_id)
        self._steps.append((claimed, added))
        return set(taken), [k.job_id for k in added]

    def undo(self) -> tuple[list[uuid.UUID], set[uuid.UUID]] | None:
        """Take the last step back (the claimed queued again with their keys, as a retry is;
        the added gone): the jobs back, and those gone; None when there is none left."""
        if not self._steps:
            return None
        claimed, added = self._steps.pop()
        for keys in added:
            self._order.apply("canceled", keys.job_id, None)
            self._queue.pop()
        for keys in claimed:
            self._order.apply("queued", keys.job_id, keys)
        self._queue.extendleft(reversed([k.job_id for k in claimed]))
        return [k.job_id for k in claimed], {k.job_id for k in added}


def mismatched(order: QueueOrder, passed: list[Followed], asked: list[uuid.UUID]) -> int:
    """How many asked queued jobs a pass left out or placed otherwise than place() does."""
    got = {
        job_id: (position, work_ahead, tag)
        for group in passed
        for job_id, position, work_ahead, tag in zip(
            group.job_ids, group.positions, group.work_ahead, group.start_tags, strict=True
        )
    }
    wrong = 0
    for job_id in asked:
        place = order.place(job_id)
        wrong += place is not None and got.get(job_id) != tuple(place)
    return wrong + sum(1 for job_id in got if order.place(job_id) is None)


def position_keys(key: dict[str, Any]) -> dict[str, Any]:
    """The raw count's parameters from a queued_keys row."""
    return {k: key[k] for k in ("model", "priority", "start_tag", "queue_seq")}


async def run(ctx: Context) -> list[Figure]:
    finished = 100_000 if ctx.quick else 1_000_000
    sizes = (100, 1_000, 10_000) if ctx.quick else (100, 10_000, 100_000)
    figures: list[Figure] = []
    async with ctx.database(FAMILY) as bdb:
        env.log(f"positions: seeding {finished:,} finished jobs")
        seeded_s = await env.seed(
            bdb, finished, status="complete", params=PARAMS, host=HOST, connections=3
        )
        ctx.notes.append(
            f"positions: {finished:,} finished jobs (with their messages, without events) were "
            f"seeded in {seeded_s:.0f} s (3 connections, foreign-key triggers off)."
        )
        env.log(f"positions: seeded in {seeded_s:.0f} s")
        # A live worker of the model, so that the ETA is computed (none: eta_s is null).
        session = await bdb.connect("gpuqueue-bench-worker")
        conn = await bdb.connect()
        pool = db.make_pool(bdb.url, env.APP, min_size=1, max_size=2)
        await pool.open()
        try:
            await workers.register(
                session,
                uuid.uuid4(),
                host=HOST,
                device="gpu0",
                backend="bench",
                model=BUILTIN_MODEL,
            )
            queued = 0
            for size in sizes:
                await env.seed(
                    bdb, size - queued, status="queued", params=PARAMS, high_priority_share=0.1
                )
                queued = size
                await env.vacuum(bdb)
                placing = Placing(pool)
                await placing.load()
                figures += await _one_job(ctx, bdb, conn, placing, size, finished)
                figures += await _all_positions(ctx, bdb, conn, placing, size, finished)
        finally:
            await pool.close()
            await conn.close()
            await session.close()
    return figures


def _at(size: int, finished: int) -> str:
    return f"{size:,} queued, {finished:,} finished"


async def _timed(conn: db.Connection, query: str, params: dict[str, Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    cur = await conn.execute(query, params, prepare=False)
    rows = await cur.fetchall()
    return time.perf_counter() - started, rows


async def _one_job(
    ctx: Context, bdb: BenchDb, conn: db.Connection, placing: Placing, size: int, finished: int
) -> list[Figure]:
    keys = await env.fetch(conn, "queued_keys")
    samples = 100 if ctx.quick else (200 if size >= 100_000 else 300)
    rng = random.Random(size)
    picks = [rng.choice(keys) for _ in range(samples)]
    ours: list[float] = []
    ceiling: list[float] = []
    mismatches = 0
    no_eta = 0
    ceiling_sql = BENCH_SQL["position_one"]
    # The web server's EtaCache hands every request of a second the same model: read it once.
    eta: EtaModel = await positions.eta_model(conn)
    for i, key in enumerate([*picks[:10], *picks]):  # the first 10 warm the caches
        params = position_keys(key)
        # Alternate which goes first, so neither always runs on the warmer cache.
        if i % 2:
            t_ceiling, rows = await _timed(conn, ceiling_sql, params)
        started = time.perf_counter()
        job = await jobs.get_job(conn, key["job_id"], actor=bdb.actor, eta=eta, placer=placing)
        t_ours = time.perf_counter() - started
        if not i % 2:
            t_ceiling, rows = await _timed(conn, ceiling_sql, params)
        if job["queue_position"] != rows[0]["queue_position"]:
            mismatches += 1
        if job["eta_s"] is None:
            no_eta += 1
        if i >= 10:
            ours.append(t_ours)
            ceiling.append(t_ceiling)
    note = (
        f"ours: queueing.jobs.get_job with the web's queue order (the JSON of "
        f"GET /api/jobs/{{id}}, position + work ahead from the order, eta_s; seeded jobs have "
        f"no events to list); {samples} jobs drawn uniformly from the queue"
    )
    if mismatches:
        note += f"; {mismatches} positions DIFFERED from the raw count"
    if no_eta:
        note += f"; {no_eta} had NO eta_s"
    at = _at(size, finished)
    p50_targets = (ratio_at_most(1.5), *((at_most(1.0, "ms"),) if size == 10_000 else ()))
    return [
        Figure(
            FAMILY,
            "one job's position and ETA p50",
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
            "one job's position and ETA p99",
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
    ctx: Context, bdb: BenchDb, conn: db.Connection, placing: Placing, size: int, finished: int
) -> list[Figure]:
    """Ours: the fan-out's pass (Following.places) following every job of the conversation
    every queued job is in, after each Churn step: what the WebSocket fan-out runs for the jobs
    it follows while the queue moves."""
    samples = 6 if size >= 100_000 else 12 if size >= 10_000 else 20
    if ctx.quick:
        samples //= 2
    ours: list[float] = []
    ceiling: list[float] = []
    before: list[float] = []
    ceiling_sql = BENCH_SQL["position_all"]
    before_sql = BENCH_SQL["position_pass_before"]
    before_params = {"conversation_ids": [bdb.conversation_id], "job_ids": []}
    order = placing.order
    following = order.following()
    followed = sorted(order.in_conversation(bdb.conversation_id))
    in_claim_order = sorted(followed, key=lambda j: cast(Keys, order.keys_of(j)).key)
    churn = Churn(order, in_claim_order)
    started = time.perf_counter()
    following.places(followed)  # the first pass ranks every job afresh
    first_s = time.perf_counter() - started
    wrong = 0
    for i in range(samples + 2):  # two warm-up rounds
        claimed, added = churn.step()
        followed = [j for j in followed if j not in claimed] + added
        started = time.perf_counter()
        passed = following.places(followed)  # the fan-out's one call per pass
        t_ours = time.perf_counter() - started
        wrong += mismatched(order, passed, followed)
        t_ceiling, raw = await _timed(conn, ceiling_sql, {})
        t_before, _ = await _timed(conn, before_sql, before_params)
        if len(raw) != size or sum(len(g.job_ids) for g in passed) != size:
            raise AssertionError(f"{len(raw)} positions returned, not {size}")
        if i >= 2:
            ours.append(t_ours)
            ceiling.append(t_ceiling)
            before.append(t_before)
    while (back := churn.undo()) is not None:  # back to the seeded queue, pass by pass
        returned, gone = back
        followed = [j for j in followed if j not in gone] + returned
        passed = following.places(followed)
    theirs = {r["job_id"]: r["queue_position"] for r in raw}
    got = {j: p for g in passed for j, p in zip(g.job_ids, g.positions, strict=True)}
    mismatches = wrong + sum(1 for job_id in theirs if got.get(job_id) != theirs[job_id])
    note = (
        f"ours: Following.places for every queued job (position, work ahead: the fan-out's "
        f"position pass, no SQL) after {CHURN} claims and {CHURN} enqueues; its first pass "
        f"(every job ranked afresh) {ms(first_s):.1f} ms; before, the window query the fan-out "
        f"ran: {ms(p50(before)):.1f} ms p50; {samples} samples"
    )
    if mismatches:
        note += f"; {mismatches} places DIFFERED from place() or the raw row_number()"
    targets = {10_000: (at_most(10.0, "ms"),), 100_000: (at_most(100.0, "ms"),)}.get(size, ())
    at = _at(size, finished)
    return [
        Figure(
            FAMILY,
            "all positions, the fan-out's pass p50",
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
            "all positions, the fan-out's pass p99",
            at,
            "ms",
            ms(p99(ours)),
            ms(p99(ceiling)),
            CEILING_ALL,
            (),
            note,
        ),
    ]
