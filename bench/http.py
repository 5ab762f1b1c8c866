"""The HTTP API: enqueue with 16 concurrent clients, and GET /api/jobs/{id} with 10,000 queued.

`gpuqueue web` runs in a subprocess; the clients are aiohttp in this process. Enqueue: 16 users,
each with a token and a conversation, one client each, keep-alive, back to back. Ours is the
whole product path: queueing.jobs.enqueue with the web's placer and sequencer, then the answer
waits until the web process's fan-out has followed the job's queued event and placed it from its
in-memory queue order (web/live/placing.py). The baseline is the direct queueing call without a
web process (queueing.jobs.enqueue on a pool of 16, 16 concurrent callers, no placer, so the
position is counted in SQL; the ETA cached for a second as the server does). Rounds alternate
and start from an empty queue.

GET /api/jobs/{id}: 10,000 queued jobs, seeded, then a fresh `gpuqueue web` so that its queue
order holds them (seeded jobs have no events to follow); the position comes from that order.
One client asks for jobs drawn uniformly from the queue, one at a time. The baseline is the
position query alone (the raw count, keys known).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp

from bench import env
from bench.enqueue import empty_queue, users
from bench.env import BenchDb, Context, User
from bench.positions import position_keys
from bench.queries import BENCH_SQL
from bench.report import Figure, at_least, at_most
from bench.stats import ms, p50, p99
from queueing import db, jobs
from queueing.positions import EtaCache

FAMILY = "http"
CLIENTS = 16
BODY = {"prompt": "bench http", "width": 64, "height": 64, "steps": 1, "seed": 0}
WEB_ENV = {"GPUQUEUE_MAX_QUEUED_PER_USER": "1000000000", "GPUQUEUE_WEB_POOL_SIZE": "20"}


async def http_enqueue(
    base: str, clients: list[User], seconds: float, body: dict[str, Any] = BODY
) -> float:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = 0.0
        done = 0

        async def client(user: User, warm: int) -> None:
            nonlocal done
            url = f"{base}/api/conversations/{user.conversation_id}/images"
            headers = {"Authorization": f"Bearer {user.token}"}
            while warm > 0 or time.perf_counter() < stop_at:
                async with session.post(url, json=body, headers=headers) as response:
                    if response.status != 202:
                        raise RuntimeError(
                            f"POST images answered {response.status}: "
                            f"{(await response.text())[:300]}"
                        )
                    await response.read()
                if warm > 0:
                    warm -= 1
                else:
                    done += 1

        await asyncio.gather(*(client(u, 5) for u in clients))  # connections up, plans warm
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(client(u, 0) for u in clients))
        return done / (time.perf_counter() - started)


async def direct_enqueue(bdb: BenchDb, clients: list[User], seconds: float) -> float:
    request = jobs.JobRequest(prompt="bench direct", params=dict(BODY))
    async with db.make_pool(bdb.url, "gpuqueue-bench", min_size=CLIENTS, max_size=CLIENTS) as pool:
        cache = EtaCache(1.0)
        stop_at = 0.0
        done = 0

        async def client(user: User, warm: int) -> None:
            nonlocal done
            while warm > 0 or time.perf_counter() < stop_at:
                await jobs.enqueue(
                    pool,
                    user.conversation_id,
                    request,
                    actor=user.actor,
                    max_queued=1_000_000_000,
                    eta=await cache.get(pool),
                )
                if warm > 0:
                    warm -= 1
                else:
                    done += 1

        await asyncio.gather(*(client(u, 5) for u in clients))
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(client(u, 0) for u in clients))
        return done / (time.perf_counter() - started)


async def get_job_latency(
    base: str, bdb: BenchDb, samples: int
) -> tuple[list[float], list[float], int]:
    """GET /api/jobs/{id} of `samples` jobs drawn uniformly from the queue, each beside the raw
    position count; the times and how many positions differed."""
    conn = await bdb.connect()
    try:
        keys = await env.fetch(conn, "queued_keys")
        rng = random.Random(7)
        picks = [rng.choice(keys) for _ in range(samples)]
        ours: list[float] = []
        ceiling: list[float] = []
        mismatches = 0
        headers = {"Authorization": f"Bearer {bdb.token}"}
        async with aiohttp.ClientSession() as session:
            for i, key in enumerate([*picks[:10], *picks]):
                started = time.perf_counter()
                async with session.get(f"{base}/api/jobs/{key['job_id']}", headers=headers) as r:
                    body: dict[str, Any] = await r.json()
                t_ours = time.perf_counter() - started
                started = time.perf_counter()
                cur = await conn.execute(
                    BENCH_SQL["position_one"], position_keys(key), prepare=False
                )
                row = await cur.fetchone()
                t_ceiling = time.perf_counter() - started
                assert row is not None
                if body.get("queue_position") != row["queue_position"]:
                    mismatches += 1
                if i >= 10:
                    ours.append(t_ours)
                    ceiling.append(t_ceiling)
        return ours, ceiling, mismatches
    finally:
        await conn.close()


async def run(ctx: Context) -> list[Figure]:
    rounds = 2 if ctx.quick else 3
    seconds = 2.0 if ctx.quick else 3.0
    queued = 1_000 if ctx.quick else 10_000
    async with ctx.database(FAMILY) as bdb:
        conn = await bdb.connect()
        try:
            clients = await users(bdb, conn, CLIENTS)
        finally:
            await conn.close()
        child = await env.start_web(ctx, bdb, env=WEB_ENV)
        async with child:
            rates: dict[str, list[float]] = {"http": [], "direct": []}
            for _ in range(rounds):
                rates["http"].append(await http_enqueue(child.base_url, clients, seconds))
                await empty_queue(bdb)
                rates["direct"].append(await direct_enqueue(bdb, clients, seconds))
                await empty_queue(bdb)
            child.check_alive()
        await env.seed(bdb, queued, status="queued", high_priority_share=0.1)
        await env.vacuum(bdb)
        # A web process started now loads the seeded jobs into its queue order.
        child = await env.start_web(ctx, bdb, env=WEB_ENV)
        async with child:
            ours, ceiling, mismatches = await get_job_latency(
                child.base_url, bdb, 100 if ctx.quick else 300
            )
            child.check_alive()
    http_rate = sum(rates["http"]) / rounds
    direct_rate = sum(rates["direct"]) / rounds
    note = "" if not mismatches else f"; {mismatches} positions DIFFERED from the raw count"
    return [
        Figure(
            FAMILY,
            "enqueue through HTTP, 16 concurrent clients",
            "16 users, keep-alive",
            "jobs/s",
            http_rate,
            direct_rate,
            "direct queueing.jobs.enqueue, 16 callers, no placer",
            (at_least(1000.0, "jobs/s"),),
            f"mean of {rounds} rounds of {seconds:g} s (HTTP "
            f"{', '.join(f'{r:,.0f}' for r in rates['http'])}; direct "
            f"{', '.join(f'{r:,.0f}' for r in rates['direct'])})",
        ),
        Figure(
            FAMILY,
            "GET /api/jobs/{id} p50",
            f"{queued:,} queued",
            "ms",
            ms(p50(ours)),
            ms(p50(ceiling)),
            "the position query alone (raw count)",
            (at_most(5.0, "ms"),),
            f"position from the web process's queue order; p99 {ms(p99(ours)):.2f} ms "
            f"(position query {ms(p99(ceiling)):.2f} ms); "
            f"{len(ours)} jobs drawn uniformly from the queue{note}",
        ),
    ]
