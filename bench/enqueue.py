"""Enqueue: one job's latency from one connection, and throughput from 8 connections.

Ours is what `POST /api/conversations/{id}/images` runs against the database:
queueing.jobs.enqueue with the web process's placer and its sequencer (conversation and model
check, the per-user lock with the limit, the user's latest finish tag, the fair-share tags cut
from the cost model's estimate, message + job, then the event lock for the events + one NOTIFY).
The sequencer sends the enqueues in flight as one gq_enqueue_batch statement and transaction
(queueing/sequencer.py) on its own pool, as the web process does, so ours does not use the
caller's connection: "8 connections" is 8 concurrent callers whose enqueues the sequencer
batches (a lone caller's batch is one enqueue, gq_enqueue 'place'). No position counted: the web
process places the job from its in-memory queue order. The wait for that placing is the web's,
not the database's, and is left out here (`Unwaited`); the http and scaling families measure
it through HTTP. The counted path (no placer: 'count', the position counted under the event
lock, O(jobs ahead)) is shown as information. The ETA model is read once and passed in, as the
web server's one-second cache does.

Two baselines. "Before": the enqueue as it was before fair share, 011's FIFO gq_enqueue, kept in
bench/sql/enqueue_before.sql and called as 011's queueing.jobs.enqueue called it, on the same
database, in blocks interleaved with ours (issue 12's target: p50 within 1.2x). The ceiling: one
statement, message + job + one event (bench/sql/ceilings.sql: enqueue_one); a second ceiling
adds the NOTIFY (enqueue_one_notify), to show what NOTIFY's commit lock costs on its own.

Jobs are spread over 64 users (each with its own conversation), so a user's queued count stays
near the product's per-user limit of 100, as in real use. Each throughput round starts from an
empty queue (the counted path's cost grows with the queue; `bench scaling` shows how).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from bench import env
from bench.env import BenchDb, Context, User
from bench.queries import BENCH_SQL
from bench.report import Figure, ratio_at_least, ratio_at_most
from bench.stats import ms, p50, p99
from queueing import db, jobs
from queueing.eta import EtaModel
from queueing.positions import eta_model, with_eta
from queueing.queue_order import Place
from queueing.sequencer import Sequencer

FAMILY = "enqueue"
BEFORE = "011's FIFO gq_enqueue, same run"
CEILING = "raw one-statement CTE insert"
CEILING_NOTIFY = "the same CTE + pg_notify"
PARAMS = {"width": 64, "height": 64, "steps": 1, "seed": 0}
USERS = 64
MAX_QUEUED = 1_000_000_000

Op = Callable[[db.Connection], Awaitable[Any]]


class Unwaited:
    """The web's placer without its wait: its sequencer, as in the web process; the place the
    fan-out would fill in (from the web process's queue order) is left out of the figure."""

    seq = 0

    def __init__(self, sequencer: Sequencer) -> None:
        self.sequencer = sequencer

    def place(self, job_id: UUID) -> Place | None:
        return None

    async def placed(self, seq: int, job_id: UUID) -> Place | None:
        return Place(0, 0.0, 0.0)

    async def reached(self, seq: int) -> bool:
        return True


class Enqueuers:
    """Round-robin over users, so that no user's queued count grows without bound."""

    def __init__(
        self, users: list[User], eta: EtaModel, sequencer: Sequencer, prompt: str = "bench enqueue"
    ) -> None:
        self._users = itertools.cycle(users)
        self._unwaited = Unwaited(sequencer)
        self._eta = eta
        self.prompt = prompt
        self._request = jobs.JobRequest(prompt=prompt, params=PARAMS)

    async def ours(self, conn: db.Connection) -> Any:
        """The web's database call: queueing.jobs.enqueue with a placer and its sequencer."""
        return await self._enqueue(conn, self._unwaited)

    async def counted(self, conn: db.Connection) -> Any:
        """Without a placer: the position counted under the event lock ('count')."""
        return await self._enqueue(conn, None)

    async def _enqueue(self, conn: db.Connection, placer: Unwaited | None) -> Any:
        user = next(self._users)
        return await jobs.enqueue(
            conn,
            user.conversation_id,
            self._request,
            actor=user.actor,
            max_queued=MAX_QUEUED,
            eta=self._eta,
            placer=placer,
        )

    async def before(self, conn: db.Connection) -> Any:
        """011's queueing.jobs.enqueue: the FIFO function, then eta_s from the passed model."""
        user = next(self._users)
        request = self._request
        cur = await conn.execute(
            BENCH_SQL["enqueue_before"],
            {
                "conversation_id": user.conversation_id,
                "owner": user.actor.owner,
                "prompt": request.prompt,
                "params": Jsonb(request.params),
                "priority": request.priority,
                "max_attempts": request.max_attempts,
                "timeout_s": request.timeout_s,
                "max_queued": MAX_QUEUED,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        return with_eta(row["job"], self._eta)

    async def ceiling(self, conn: db.Connection) -> Any:
        return await self._raw(conn, "enqueue_one")

    async def ceiling_notify(self, conn: db.Connection) -> Any:
        return await self._raw(conn, "enqueue_one_notify")

    async def _raw(self, conn: db.Connection, query: str) -> Any:
        user = next(self._users)
        cur = await conn.execute(
            BENCH_SQL[query],
            {
                "conversation_id": user.conversation_id,
                "user_id": user.actor.user_id,
                "prompt": self.prompt,
                "params": Jsonb(PARAMS),
            },
        )
        return await cur.fetchall()


async def users(bdb: BenchDb, conn: db.Db, count: int) -> list[User]:
    return [await bdb.new_user(conn, f"bench-{i}") for i in range(count)]


async def latencies(conn: db.Connection, op: Op, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await op(conn)
        out.append(time.perf_counter() - started)
    return out


LOAD_APP = "gpuqueue-bench-load"


async def throughput(
    bdb: BenchDb, op: Op, clients: int, seconds: float, waits: dict[str, int] | None = None
) -> float:
    """Jobs per second from `clients` connections, each enqueueing back to back; with `waits`,
    what the connections were doing (pg_stat_activity samples) is added to it."""
    conns = [await bdb.connect(LOAD_APP) for _ in range(clients)]
    try:
        for conn in conns:  # warm: each connection prepares its statements
            for _ in range(6):
                await op(conn)
        stop_at = 0.0
        done = 0

        async def client(conn: db.Connection) -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await op(conn)
                done += 1

        async with env.WaitSampler(bdb, LOAD_APP) as sampler:
            started = time.perf_counter()
            stop_at = started + seconds
            await asyncio.gather(*(client(c) for c in conns))
            elapsed = time.perf_counter() - started
        if waits is not None:
            for key, count in sampler.counts.items():
                waits[key] = waits.get(key, 0) + count
        return done / elapsed
    finally:
        for conn in conns:
            await conn.close()


def summarize(counts: dict[str, int], top: int = 3) -> str:
    total = sum(counts.values())
    if not total:
        return "no samples"
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{100 * n / total:.0f} % {k}" for k, n in ranked)


def sequencer_pool(bdb: BenchDb) -> db.Pool:
    """The web process's sequencer connections: ours goes through them, one batch at a time
    (a round's callers' own connections, which the samples show, stay idle)."""
    return db.make_pool(bdb.url, env.APP, min_size=1, max_size=2)


async def empty_queue(bdb: BenchDb) -> None:
    """Cancel every queued job (no events: bookkeeping, not a transition) and vacuum."""
    conn = await bdb.connect()
    try:
        await env.execute(conn, "cancel_queued")
    finally:
        await conn.close()
    await env.vacuum(bdb)


async def run(ctx: Context) -> list[Figure]:
    singles = 200 if ctx.quick else 400
    seconds = 1.5 if ctx.quick else 3.0
    async with ctx.database(FAMILY) as bdb, sequencer_pool(bdb) as pool:
        conn = await bdb.connect()
        try:
            await env.execute(conn, "enqueue_before_function")
            enqueuers = Enqueuers(
                await users(bdb, conn, USERS), await eta_model(conn), Sequencer(pool)
            )
            single_ops = {
                "ours": enqueuers.ours,
                "counted": enqueuers.counted,
                "before": enqueuers.before,
                "ceiling": enqueuers.ceiling,
            }
            single: dict[str, list[float]] = {name: [] for name in single_ops}
            for op in single_ops.values():
                await latencies(conn, op, 20)
            for block in range(8):  # interleaved blocks, so drift hits every variant alike
                order = list(single_ops) if block % 2 else list(reversed(single_ops))
                for name in order:
                    single[name] += await latencies(conn, single_ops[name], singles // 8)
        finally:
            await conn.close()
        await empty_queue(bdb)
        variants = {
            "ours": enqueuers.ours,
            "counted": enqueuers.counted,
            "before": enqueuers.before,
            "ceiling": enqueuers.ceiling,
            "notify": enqueuers.ceiling_notify,
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        waits: dict[str, dict[str, int]] = {name: {} for name in variants}
        for _ in range(3):
            for name, op in variants.items():
                rates[name].append(await throughput(bdb, op, 8, seconds, waits[name]))
                await empty_queue(bdb)
    mean = {name: sum(r) / len(r) for name, r in rates.items()}
    ours, counted = single["ours"], single["counted"]
    before, ceiling = single["before"], single["ceiling"]

    def spread(name: str) -> str:
        return ", ".join(f"{r:,.0f}" for r in rates[name])

    samples = f"{len(ours)} samples each, in 8 interleaved blocks"
    return [
        Figure(
            FAMILY,
            "enqueue one job p50 with fair share, vs before",
            "one connection",
            "ms",
            ms(p50(ours)),
            ms(p50(before)),
            BEFORE,
            (ratio_at_most(1.2),),
            f"p99 ours {ms(p99(ours)):.2f} ms, before {ms(p99(before)):.2f} ms; {samples}; "
            f"before writes its jobs to a queue of their own (model 'fifo'), as long as ours; "
            f"it pays today's wider index and jobs_user_tags_idx, which 011 did not have",
        ),
        Figure(
            FAMILY,
            "enqueue one job p50, one connection",
            "one connection",
            "ms",
            ms(p50(ours)),
            ms(p50(ceiling)),
            CEILING,
            (),
            f"p99 ours {ms(p99(ours)):.2f} ms, ceiling {ms(p99(ceiling)):.2f} ms; {samples}",
        ),
        Figure(
            FAMILY,
            "enqueue one job p50, position counted in SQL (no placer)",
            "one connection",
            "ms",
            ms(p50(counted)),
            ms(p50(ceiling)),
            CEILING,
            (),
            f"queueing.jobs.enqueue without a placer ('count': O(jobs ahead) under the "
            f"event lock), as a caller without a web process gets it; p99 "
            f"{ms(p99(counted)):.2f} ms; {samples}",
        ),
        Figure(
            FAMILY,
            "enqueue throughput, 8 connections",
            "8 connections",
            "jobs/s",
            mean["ours"],
            mean["ceiling"],
            CEILING,
            (ratio_at_least(0.5),),
            f"mean of 3 interleaved rounds of {seconds:g} s (ours {spread('ours')}; "
            f"ceiling {spread('ceiling')}). Connections were, ours (the callers' own: the "
            "sequencer's pool runs the batches): "
            f"{summarize(waits['ours'])}; ceiling: {summarize(waits['ceiling'])}",
        ),
        Figure(
            FAMILY,
            "enqueue throughput, 8 connections, position counted in SQL (no placer)",
            "8 connections",
            "jobs/s",
            mean["counted"],
            mean["ceiling"],
            CEILING,
            (),
            f"'count' (rounds {spread('counted')}); its connections were: "
            f"{summarize(waits['counted'])}",
        ),
        Figure(
            FAMILY,
            "enqueue throughput, 8 connections, vs before",
            "8 connections",
            "jobs/s",
            mean["ours"],
            mean["before"],
            BEFORE,
            (),
            f"before's rounds {spread('before')}; its connections were: "
            f"{summarize(waits['before'])}",
        ),
        Figure(
            FAMILY,
            "enqueue throughput, 8 connections, vs a ceiling that also NOTIFYs",
            "8 connections",
            "jobs/s",
            mean["ours"],
            mean["notify"],
            CEILING_NOTIFY,
            (),
            f"what NOTIFY alone costs the ceiling (rounds {spread('notify')}); its "
            f"connections were: {summarize(waits['notify'])}",
        ),
    ]
