"""Scaling: every per-job figure at 100, 1,000, 10,000 and 100,000 queued, each beside its ceiling.

The table holds 1,000,000 finished jobs (100,000 with --quick, and sizes up to 10,000); the
queue grows through the sizes in turn (bench/sql/seed.sql, 10 % at priority 1), the last 20 jobs
of each size in a conversation of their own: the "20 jobs at the tail" a listing asks for. At
each size, in this order:

- enqueue from the database side, no web process running: one job's p50 from one connection and
  the rate from 8, ours (the web's call with its sequencer, which batches the 8 callers'
  enqueues, bench/enqueue.py `Unwaited`) and
  the counted path (gq_enqueue 'count', information), interleaved with the raw CTE ceiling
  (enqueue_one). Every round's jobs are taken out again (bookkeeping, no events), so each
  round runs at its size, and a CHECKPOINT, so the next round does not pay for its writes.
  Each 8-connection round of ours takes turns with a round of ours on an empty queue: a second
  database with the same finished jobs and 100 queued, so that the issue's "at 100,000 queued
  >= 0.8x its own empty-queue rate" compares rates measured in the same minutes (a comparison
  with the first size, minutes earlier, took the machine's drift for the queue's size).
- the fan-out's position pass: Following.places for 1,000 followed jobs spread through the
  queue (all of them below 1,000), the order loaded as a web process loads it (Placing.load),
  each pass after a step of the queue (bench/positions.py Churn), against the window query the
  product ran before (bench/sql/positions_before.sql).
- through `gpuqueue web`, started now so that its queue order holds the seeded jobs (they have
  no events to follow): GET /api/conversations/{id}/jobs of the tail conversation against the
  same listing in raw SQL (one row_number() pass), GET /api/jobs/{id} over jobs drawn uniformly
  against the raw position count, then HTTP enqueue from 16 keep-alive clients (16 users, one
  each) with our aiohttp client and with `hey` (one `hey -c 1` process per user), against the
  raw CTE from 16 connections.

The rows go into the run's table; bench/results/scaling.png draws them (log-x queue size, ours
solid, each ceiling dashed in the same colour).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import psycopg

from bench import env
from bench.enqueue import Enqueuers, latencies, sequencer_pool, summarize, throughput, users
from bench.env import BenchDb, Context, User
from bench.http import BODY, CLIENTS, WEB_ENV, get_job_latency, http_enqueue
from bench.positions import CHURN, Churn, mismatched
from bench.queries import BENCH_SQL
from bench.report import Figure, Target, at_least, at_most, not_run, ratio_at_least
from bench.stats import ms, p50, p99
from queueing import db
from queueing.positions import eta_model
from queueing.sequencer import Sequencer
from web.live.placing import Placing

FAMILY = "scaling"
PLOT = Path(__file__).with_name("results") / "scaling.png"
LOAD_PROMPT = "bench scaling load"
TAIL = 20  # the listed conversation's jobs, the last of each size
EMPTY = 100  # the queue of the empty-queue twin (the smallest size)
FOLLOWED = 1_000  # jobs the position pass follows
USERS = 64
CTE = "raw CTE insert (enqueue_one)"
CTE_16 = "raw CTE insert, 16 connections"


@dataclass(frozen=True)
class Series:
    """One line of the plot: a figure measured at every size."""

    key: str
    name: str
    unit: str
    baseline_is: str


ENQUEUE_P50 = Series("enqueue_p50", "enqueue one job p50 (web's call)", "ms", CTE)
COUNTED_P50 = Series("counted_p50", "enqueue one job p50, position counted", "ms", CTE)
ENQUEUE_RATE = Series("enqueue_rate", "enqueue, 8 connections (web's call)", "jobs/s", CTE)
COUNTED_RATE = Series("counted_rate", "enqueue, 8 connections, position counted", "jobs/s", CTE)
PASS_P50 = Series(
    "pass_p50",
    f"fan-out position pass, {FOLLOWED:,} followed jobs, p50",
    "ms",
    "before: the window query",
)
LIST_P50 = Series(
    "list_p50",
    f"GET /api/conversations/{{id}}/jobs p50, {TAIL} jobs at the tail",
    "ms",
    "raw SQL listing, row_number()",
)
GET_P50 = Series("get_p50", "GET /api/jobs/{id} p50", "ms", "raw count (position_one)")
HTTP_RATE = Series("http_rate", "HTTP enqueue, 16 clients (aiohttp)", "jobs/s", CTE_16)
HEY_RATE = Series("hey_rate", "HTTP enqueue, 16 clients (hey)", "jobs/s", CTE_16)
SERIES = (
    ENQUEUE_P50,
    COUNTED_P50,
    ENQUEUE_RATE,
    COUNTED_RATE,
    PASS_P50,
    LIST_P50,
    GET_P50,
    HTTP_RATE,
    HEY_RATE,
)


@dataclass(frozen=True)
class Twin:
    """The empty queue beside the growing one: a second database with the same finished jobs."""

    bdb: BenchDb
    enqueuers: Enqueuers


def _at(size: int, finished: int) -> str:
    return f"{size:,} queued, {finished:,} finished"


def _figure(
    series: Series,
    size: int,
    finished: int,
    ours: float,
    baseline: float,
    note: str,
    targets: tuple[Target, ...] = (),
) -> Figure:
    return Figure(
        FAMILY,
        series.name,
        _at(size, finished),
        series.unit,
        ours,
        baseline,
        series.baseline_is,
        targets,
        note,
        extra={"series": series.key, "queued": size},
    )


async def run(ctx: Context) -> list[Figure]:
    finished = 100_000 if ctx.quick else 1_000_000
    sizes = (100, 1_000, 10_000) if ctx.quick else (100, 1_000, 10_000, 100_000)
    figures: list[Figure] = []
    async with (
        ctx.database(FAMILY) as bdb,
        ctx.database(f"{FAMILY}_empty") as empty_db,
        sequencer_pool(bdb) as pool,
        sequencer_pool(empty_db) as empty_pool,
    ):
        env.log(f"scaling: seeding {finished:,} finished jobs, twice")
        seeded_s = await env.seed(bdb, finished, status="complete", connections=3)
        await env.seed(empty_db, finished, status="complete", connections=3)
        await env.seed(empty_db, EMPTY, status="queued", high_priority_share=0.1)
        await env.vacuum(empty_db)
        ctx.notes.append(
            f"scaling: {finished:,} finished jobs seeded in {seeded_s:.0f} s (3 connections)."
        )
        conn = await bdb.connect()
        empty_conn = await empty_db.connect()
        try:
            people = await users(bdb, conn, USERS)
            enqueuers = Enqueuers(
                people, await eta_model(conn), Sequencer(pool), prompt=LOAD_PROMPT
            )
            empty = Twin(
                empty_db,
                Enqueuers(
                    await users(empty_db, empty_conn, USERS),
                    await eta_model(empty_conn),
                    Sequencer(empty_pool),
                    prompt=LOAD_PROMPT,
                ),
            )
            queued = 0
            for size in sizes:
                started = time.perf_counter()
                await env.seed(bdb, size - queued - TAIL, status="queued", high_priority_share=0.1)
                tail = await bdb.new_conversation(conn, f"tail of {size}")
                await env.seed(bdb, TAIL, status="queued", conversation_id=tail)
                queued = size
                await env.vacuum(bdb)
                figures += await _enqueue(ctx, bdb, conn, enqueuers, empty, size, finished)
                await env.vacuum(bdb)
                await env.vacuum(empty_db)
                figures += await _position_pass(ctx, bdb, conn, size, finished)
                figures += await _through_web(ctx, bdb, enqueuers, people, tail, size, finished)
                await env.vacuum(bdb)
                env.log(f"scaling: {size:,} queued done in {time.perf_counter() - started:.0f} s")
        finally:
            await conn.close()
            await empty_conn.close()
    try:
        plot(figures, PLOT, finished)
        ctx.notes.append(f"scaling: plot written to {PLOT}.")
    except ImportError as exc:
        ctx.notes.append(f"scaling: no plot ({exc}; pip install matplotlib).")
    return figures


async def _take_out_load(bdb: BenchDb) -> None:
    conn = await bdb.connect()
    try:
        await env.execute(conn, "cancel_queued_prompt", {"prompt": LOAD_PROMPT})
        # The round's writes go to disk now, not during the next round (a round right after
        # the ceiling's ran a fifth slower without it). Needs pg_checkpoint or a superuser.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await env.execute(conn, "checkpoint")
    finally:
        await conn.close()


async def _enqueue(
    ctx: Context,
    bdb: BenchDb,
    conn: db.Connection,
    enqueuers: Enqueuers,
    empty: Twin,
    size: int,
    finished: int,
) -> list[Figure]:
    singles = 80 if ctx.quick else 200
    seconds = 1.0 if ctx.quick else 2.0
    ops = {"ours": enqueuers.ours, "counted": enqueuers.counted, "ceiling": enqueuers.ceiling}
    single: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():
        await latencies(conn, op, 10)
    for block in range(8):  # interleaved blocks, so drift hits every variant alike
        for name in list(ops) if block % 2 else list(reversed(ops)):
            single[name] += await latencies(conn, ops[name], singles // 8)
    await _take_out_load(bdb)
    rates: dict[str, list[float]] = {name: [] for name in [*ops, "empty"]}
    waits: dict[str, dict[str, int]] = {name: {} for name in ops}
    for _ in range(2):
        for name, op in ops.items():
            rates[name].append(await throughput(bdb, op, 8, seconds, waits[name]))
            await _take_out_load(bdb)
        rates["empty"].append(await throughput(empty.bdb, empty.enqueuers.ours, 8, seconds))
        await _take_out_load(empty.bdb)
    rate = {name: sum(r) / len(r) for name, r in rates.items()}
    smallest = size == 100
    samples = f"{len(single['ours'])} samples each, 8 interleaved blocks"

    def rounds(name: str) -> str:
        return ", ".join(f"{r:,.0f}" for r in rates[name])

    return [
        _figure(
            ENQUEUE_P50,
            size,
            finished,
            ms(p50(single["ours"])),
            ms(p50(single["ceiling"])),
            f"queueing.jobs.enqueue with a placer and sequencer, the wait for the web's "
            f"placing left out; p99 {ms(p99(single['ours'])):.2f} ms; {samples}",
        ),
        _figure(
            COUNTED_P50,
            size,
            finished,
            ms(p50(single["counted"])),
            ms(p50(single["ceiling"])),
            f"no placer ('count': O(jobs ahead) under the event lock); p99 "
            f"{ms(p99(single['counted'])):.2f} ms; {samples}",
        ),
        _figure(
            ENQUEUE_RATE,
            size,
            finished,
            rate["ours"],
            rate["ceiling"],
            f"2 interleaved rounds of {seconds:g} s (ours {rounds('ours')}; ceiling "
            f"{rounds('ceiling')}); connections were, ours (the callers' own: the "
            f"sequencer's pool runs the batches): {summarize(waits['ours'])}; "
            f"ceiling: {summarize(waits['ceiling'])}"
            + ("; the empty-queue target" if smallest else ""),
            (ratio_at_least(0.5),) if smallest else (),
        ),
        _figure(
            COUNTED_RATE,
            size,
            finished,
            rate["counted"],
            rate["ceiling"],
            f"'count' (rounds {rounds('counted')}); connections were: "
            f"{summarize(waits['counted'])}",
        ),
        Figure(
            FAMILY,
            "enqueue, 8 connections (web's call): this queue vs an empty one",
            _at(size, finished),
            "jobs/s",
            rate["ours"],
            rate["empty"],
            f"ours on an empty queue ({EMPTY} queued, {finished:,} finished)",
            (ratio_at_least(0.8),) if size == 100_000 else (),
            f"the issue's 'at 100,000 queued >= 0.8x its own empty-queue rate': the empty queue "
            f"is a second database with the same finished jobs and {EMPTY} queued, its rounds "
            f"taking turns with ours (ours {rounds('ours')}; empty {rounds('empty')}), so that "
            "the machine's drift hits both alike",
        ),
    ]


async def _position_pass(
    ctx: Context, bdb: BenchDb, conn: db.Connection, size: int, finished: int
) -> list[Figure]:
    keys = await env.fetch(conn, "queued_keys")
    step = max(1, len(keys) // FOLLOWED)
    seeded: list[UUID] = [k["job_id"] for k in keys[::step][:FOLLOWED]]
    samples = 5 if size >= 100_000 else 10 if ctx.quick else 20
    ours: list[float] = []
    before: list[float] = []
    async with db.make_pool(bdb.url, env.APP, min_size=1, max_size=2) as pool:
        placing = Placing(pool)
        started = time.perf_counter()
        await placing.load()
        load_s = time.perf_counter() - started
        order = placing.order
        following = order.following()
        churn = Churn(order, [k["job_id"] for k in keys])
        followed = list(seeded)
        started = time.perf_counter()
        following.places(followed)  # the first pass ranks every job afresh
        first_s = time.perf_counter() - started
        params = {"conversation_ids": [], "job_ids": seeded}
        rows: list[dict[str, Any]] = []
        wrong = 0
        for i in range(samples + 2):  # two warm-up rounds
            claimed, _ = churn.step()  # the jobs enqueued at the tail are not followed
            followed = [j for j in followed if j not in claimed]
            started = time.perf_counter()
            passed = following.places(followed)  # the fan-out's one call per pass
            t_ours = time.perf_counter() - started
            wrong += mismatched(order, passed, followed)
            started = time.perf_counter()
            cur = await conn.execute(BENCH_SQL["position_pass_before"], params, prepare=False)
            rows = await cur.fetchall()
            t_before = time.perf_counter() - started
            if i >= 2:
                ours.append(t_ours)
                before.append(t_before)
        while churn.undo() is not None:  # back to the seeded queue, pass by pass
            passed = following.places(seeded)
    theirs = {r["job_id"]: r["queue_position"] for r in rows}
    got = {j: p for g in passed for j, p in zip(g.job_ids, g.positions, strict=True)}
    mismatches = wrong + sum(1 for job_id in seeded if got.get(job_id) != theirs.get(job_id))
    note = (
        f"{len(seeded):,} followed jobs spread through the queue, each pass after {CHURN} claims "
        f"at its head and {CHURN} enqueues at its tail; the first pass (every job ranked afresh) "
        f"{ms(first_s):.2f} ms; the order loaded as Placing.load does in {ms(load_s):,.0f} ms; "
        f"p99 {ms(p99(ours)):.2f} ms (before {ms(p99(before)):.1f} ms); {samples} samples"
    )
    if mismatches:
        note += f"; {mismatches} places DIFFERED from place() or the window query"
    targets = {10_000: (at_most(2.0, "ms"),), 100_000: (at_most(10.0, "ms"),)}.get(size, ())
    return [_figure(PASS_P50, size, finished, ms(p50(ours)), ms(p50(before)), note, targets)]


async def _through_web(
    ctx: Context,
    bdb: BenchDb,
    enqueuers: Enqueuers,
    people: list[User],
    tail: UUID,
    size: int,
    finished: int,
) -> list[Figure]:
    seconds = 1.5 if ctx.quick else 2.0
    clients = people[:CLIENTS]
    child = await env.start_web(ctx, bdb, env=WEB_ENV)
    async with child:
        listing = await _list_latency(ctx, child.base_url, bdb, tail)
        get_ours, get_ceiling, get_mismatches = await get_job_latency(
            child.base_url, bdb, 50 if ctx.quick else 100
        )
        body = {**BODY, "prompt": LOAD_PROMPT}
        rates: dict[str, list[float]] = {"http": [], "hey": [], "ceiling": []}
        hey_error = "" if shutil.which("hey") else "hey is not installed (apt-get install hey)"
        for _ in range(2):
            rates["http"].append(await http_enqueue(child.base_url, clients, seconds, body))
            await _take_out_load(bdb)
            if not hey_error:
                rates["hey"].append(await hey_enqueue(child.base_url, clients, seconds, body))
                await _take_out_load(bdb)
            rates["ceiling"].append(await throughput(bdb, enqueuers.ceiling, CLIENTS, seconds))
            await _take_out_load(bdb)
        child.check_alive()
    rate = {name: sum(r) / len(r) if r else 0.0 for name, r in rates.items()}

    def rounds(name: str) -> str:
        return ", ".join(f"{r:,.0f}" for r in rates[name])

    ours, ceiling, rows_only, mismatches = listing
    list_note = (
        f"{TAIL} jobs, the last of the queue; p99 {ms(p99(ours)):.2f} ms; the rows alone in raw "
        f"SQL (no positions) {ms(p50(rows_only)):.2f} ms; {len(ours)} samples"
    )
    if mismatches:
        list_note += f"; {mismatches} listings' positions DIFFERED from the raw SQL"
    get_note = (
        f"p99 {ms(p99(get_ours)):.2f} ms; {len(get_ours)} jobs drawn uniformly from the queue"
    )
    if get_mismatches:
        get_note += f"; {get_mismatches} positions DIFFERED from the raw count"
    grows = (
        f"2 rounds of {seconds:g} s, each round's jobs taken out after it; ceiling rounds "
        f"{rounds('ceiling')}"
    )
    thousand = (at_least(1000.0, "jobs/s"),)
    out = [
        _figure(
            LIST_P50,
            size,
            finished,
            ms(p50(ours)),
            ms(p50(ceiling)),
            list_note,
            (at_most(10.0, "ms"),) if size == 100_000 else (),
        ),
        _figure(GET_P50, size, finished, ms(p50(get_ours)), ms(p50(get_ceiling)), get_note),
        _figure(
            HTTP_RATE,
            size,
            finished,
            rate["http"],
            rate["ceiling"],
            f"rounds {rounds('http')}; {grows}",
            thousand,
        ),
    ]
    if hey_error:
        out.append(not_run(FAMILY, HEY_RATE.name, hey_error))
    else:
        out.append(
            _figure(
                HEY_RATE,
                size,
                finished,
                rate["hey"],
                rate["ceiling"],
                f"one `hey -c 1 -z {seconds:g}s` per user, keep-alive; rounds {rounds('hey')}; "
                f"{grows}",
                thousand,
            )
        )
    return out


async def _list_latency(
    ctx: Context, base: str, bdb: BenchDb, conversation_id: UUID
) -> tuple[list[float], list[float], list[float], int]:
    """GET /api/conversations/{id}/jobs, p50 samples beside the raw listing and the raw rows."""
    samples = 40 if ctx.quick else 100
    ours: list[float] = []
    ceiling: list[float] = []
    rows_only: list[float] = []
    mismatches = 0
    params = {"conversation_id": conversation_id}
    headers = {"Authorization": f"Bearer {bdb.token}"}
    url = f"{base}/api/conversations/{conversation_id}/jobs"
    conn = await bdb.connect()
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(samples + 10):  # the first 10 warm the caches
                started = time.perf_counter()
                async with session.get(url, headers=headers) as response:
                    body: dict[str, Any] = await response.json()
                t_ours = time.perf_counter() - started
                started = time.perf_counter()
                raw = await env.fetch(conn, "conversation_list_ceiling", params)
                t_ceiling = time.perf_counter() - started
                started = time.perf_counter()
                await env.fetch(conn, "conversation_rows", params)
                t_rows = time.perf_counter() - started
                got = [j.get("queue_position") for j in body.get("jobs", [])]
                if len(got) != TAIL or got != [r["queue_position"] for r in raw]:
                    mismatches += 1
                if i >= 10:
                    ours.append(t_ours)
                    ceiling.append(t_ceiling)
                    rows_only.append(t_rows)
    finally:
        await conn.close()
    return ours, ceiling, rows_only, mismatches


HEY_OK = re.compile(r"\[202\]\s+(\d+) responses")
HEY_STATUS = re.compile(r"\[(\d{3})\]\s+(\d+) responses")
HEY_TOTAL = re.compile(r"Total:\s+([\d.]+) secs")


async def hey_enqueue(base: str, clients: Sequence[User], seconds: float, body: Any) -> float:
    """Jobs/s from one `hey -c 1 -z Ns` process per user (one keep-alive connection each), all
    at once: the sum of each process's accepted requests over its own run time."""

    async def one(user: User) -> float:
        proc = await asyncio.create_subprocess_exec(
            "hey",
            "-z",
            f"{seconds:g}s",
            "-c",
            "1",
            "-m",
            "POST",
            "-H",
            f"Authorization: Bearer {user.token}",
            "-T",
            "application/json",
            "-d",
            json.dumps(body),
            f"{base}/api/conversations/{user.conversation_id}/images",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        bad = [f"{n} x {code}" for code, n in HEY_STATUS.findall(text) if code != "202"]
        ok, total = HEY_OK.search(text), HEY_TOTAL.search(text)
        if proc.returncode or bad or ok is None or total is None:
            raise RuntimeError(f"hey: exit {proc.returncode}, {', '.join(bad)}: {text[-500:]}")
        return int(ok.group(1)) / float(total.group(1))

    return sum(await asyncio.gather(*(one(user) for user in clients)))


def plot(figures: Sequence[Figure], path: Path, finished: int) -> None:
    """Times on the left, rates on the right; log-x queue size; ceilings dashed (a ceiling two
    figures share is drawn once)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn: set[tuple[Any, ...]] = set()
    for i, series in enumerate(SERIES):
        points = sorted(
            (f.extra["queued"], f.ours, f.baseline)
            for f in figures
            if f.extra.get("series") == series.key and f.ours is not None
        )
        if not points:
            continue
        axes = left if series.unit == "ms" else right
        colour = colours[i % len(colours)]
        x = [p[0] for p in points]
        axes.plot(x, [p[1] for p in points], "o-", color=colour, label=series.name)
        baseline = tuple(p[2] for p in points)
        if (series.baseline_is, baseline) in drawn:
            continue
        drawn.add((series.baseline_is, baseline))
        axes.plot(
            x,
            list(baseline),
            "--",
            color=colour,
            alpha=0.7,
            label=f"  {series.baseline_is}",
        )
    for axes, title, unit in ((left, "per-job times", "ms"), (right, "rates", "jobs/s")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel(f"queued jobs ({finished:,} finished)")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7, loc="best")
    fig.suptitle("gpuqueue: per-job figures as the queue grows (solid: ours, dashed: baseline)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
