"""WebSocket fan-out to 1,000 subscribers of one conversation, and the web server's memory.

Ours: `gpuqueue web` in a subprocess, 1,000 sockets (in a client process of their own,
bench/ws_clients.py) subscribed to one conversation. Each round this process enqueues a job in
that conversation (one statement, committed when it returns) and the clients report when the
last socket got the job's `queued` event: commit → last receipt; then it cancels the job and
measures its `canceled` event the same way, so every round sees the same conversation (no job
piles up in it: each queued job a subscriber follows adds to every position pass). The
ceiling: a bare aiohttp server (bench/ws_bare.py) sending the same bytes to 1,000 sockets of the
same client process, from the POST that asks it to → last receipt. Both clocks are
CLOCK_MONOTONIC, shared by every process of the machine.

Memory: the web server's RSS once 1,000 sockets have come, been fed, and gone (warm-up), then
again after more such cycles.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp

from bench import env
from bench.env import BenchDb, Context
from bench.report import Figure, at_most
from bench.stats import ms, p50, p99
from harness.children import Child
from harness.commands import WebChild
from harness.ports import free_port
from queueing import jobs
from queueing.positions import eta_model

FAMILY = "websocket"
SOCKETS = 1_000
PARAMS = {"width": 64, "height": 64, "steps": 1, "seed": 0}
CEILING = "bare aiohttp broadcast, same bytes"
BACKLOG = 50


class Clients:
    """The client process, spoken to one JSON line at a time."""

    def __init__(self, child: Child) -> None:
        self.child = child

    async def ask(self, command: dict[str, Any], limit_s: float = 120.0) -> dict[str, Any]:
        return await env.ask(self.child, command, limit_s)

    async def receipt(self, marker: str) -> dict[str, Any]:
        got = await self.ask({"cmd": "report", "marker": marker, "timeout": 10.0})
        if got["received"] < SOCKETS:
            raise RuntimeError(f"only {got['received']} of {SOCKETS} sockets got job {marker}")
        return got


async def _ours(
    ctx: Context, bdb: BenchDb, clients: Clients, rounds: int, web: WebChild, ws_url: str
) -> tuple[list[float], list[float], str, list[float]]:
    """Fan-out latencies (without, then with a backlog of queued jobs in the conversation), a
    sample event, and the web RSS after each cycle of 1,000 sockets coming and going."""
    frame = {"op": "subscribe", "conversation_id": str(bdb.conversation_id)}
    request = jobs.JobRequest(prompt="bench fan-out", params=PARAMS)
    conn = await bdb.connect()
    latencies: list[float] = []
    backlogged: list[float] = []
    rss: list[float] = []
    sample = ""
    try:
        eta = await eta_model(conn)

        async def one_round() -> tuple[list[float], str]:
            job = await jobs.enqueue(
                conn, bdb.conversation_id, request, actor=bdb.actor, max_queued=10**9, eta=eta
            )
            committed = time.monotonic()
            queued = await clients.receipt(f"queued:{job['job_id']}")
            await asyncio.sleep(0.06)  # let the position pass (at most 20 a second) settle
            await jobs.cancel(conn, job["job_id"], actor=bdb.actor, eta=eta)
            canceled_at = time.monotonic()
            canceled = await clients.receipt(f"canceled:{job['job_id']}")
            await asyncio.sleep(0.06)
            took = [float(queued["last"]) - committed, float(canceled["last"]) - canceled_at]
            return took, str(queued["sample"])

        for cycle in range(3):
            await clients.ask({"cmd": "connect", "url": ws_url, "n": SOCKETS, "subscribe": frame})
            for _ in range(2):  # warm-up rounds
                await one_round()
            for _ in range(rounds if cycle == 0 else 2):
                took, sample = await one_round()
                if cycle == 0:
                    latencies += took
            await clients.ask({"cmd": "close"})
            await asyncio.sleep(1.0)  # the server notices the closes and lets go of them
            web.check_alive()
            rss.append(web.rss_kib() / 1024)
        # The same with BACKLOG jobs queued in the conversation: every subscriber follows them,
        # so each position pass weighs subscribers x followed jobs.
        await env.seed(bdb, BACKLOG, status="queued", prompt="backlog", params=PARAMS)
        await clients.ask({"cmd": "connect", "url": ws_url, "n": SOCKETS, "subscribe": frame})
        for i in range(2 + rounds // 2):
            took, _ = await one_round()
            if i >= 2:
                backlogged += took
        await clients.ask({"cmd": "close"})
    finally:
        await conn.close()
    return latencies, backlogged, sample, rss


async def _bare(ctx: Context, clients: Clients, sample: str, rounds: int) -> list[float]:
    port = free_port()
    child = env.start(ctx, "ws-bare", ["-m", "bench.ws_bare", str(port)])
    base = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    async with child, aiohttp.ClientSession() as session:

        async def up() -> bool:
            try:
                async with session.get(base) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await child.until(up, within=30, what="the bare WebSocket server")
        await clients.ask({"cmd": "connect", "url": f"{base}/ws", "n": SOCKETS, "subscribe": None})
        marker_at = sample.find('"job_id":"') + len('"job_id":"')
        old = sample[marker_at : marker_at + 36]
        for i in range(2 * rounds + 3):
            marker = str(uuid.uuid4())
            started = time.monotonic()
            async with session.post(f"{base}/broadcast", data=sample.replace(old, marker)) as r:
                await r.read()
            got = await clients.receipt(f"queued:{marker}")
            if i >= 3:
                latencies.append(float(got["last"]) - started)
            await asyncio.sleep(0.06)
        await clients.ask({"cmd": "close"})
    return latencies


async def run(ctx: Context) -> list[Figure]:
    rounds = 10 if ctx.quick else 25
    async with ctx.database(FAMILY) as bdb:
        web = await env.start_web(ctx, bdb)
        base = web.base_url
        async with web:
            # A few ordinary requests first, so the cold RSS is that of a server in use.
            async with aiohttp.ClientSession() as session:
                for _ in range(5):
                    async with session.get(
                        f"{base}/api/conversations/{bdb.conversation_id}",
                        headers={"Authorization": f"Bearer {bdb.token}"},
                    ) as response:
                        await response.read()
            cold = web.rss_kib() / 1024
            child = env.start(ctx, "ws-clients", ["-m", "bench.ws_clients"], pipes=True)
            async with child:
                clients = Clients(child)
                ws_url = f"ws://127.0.0.1:{web.port}/ws?token={bdb.token}"
                ours, backlogged, sample, rss = await _ours(ctx, bdb, clients, rounds, web, ws_url)
                bare = await _bare(ctx, clients, sample, rounds)
    growth = (rss[-1] / rss[0] - 1) * 100
    note = (
        f"{len(ours)} events ({rounds} queued + {rounds} canceled), {SOCKETS:,} sockets in "
        f"a separate client process; event of {len(sample)} B"
    )
    return [
        Figure(
            FAMILY,
            "WebSocket fan-out p50: commit → last receipt",
            f"{SOCKETS:,} subscribers",
            "ms",
            ms(p50(ours)),
            ms(p50(bare)),
            CEILING,
            (at_most(100.0, "ms"),),
            note,
        ),
        Figure(
            FAMILY,
            "WebSocket fan-out p99: commit → last receipt",
            f"{SOCKETS:,} subscribers",
            "ms",
            ms(p99(ours)),
            ms(p99(bare)),
            CEILING,
            (),
            note,
        ),
        Figure(
            FAMILY,
            "WebSocket fan-out p50, 50 queued jobs followed by every subscriber",
            f"{SOCKETS:,} subscribers",
            "ms",
            ms(p50(backlogged)),
            ms(p50(bare)),
            CEILING,
            (),
            f"p99 {ms(p99(backlogged)):.0f} ms; {len(backlogged)} events; each position pass "
            f"after an event walks {SOCKETS:,} subscriptions x {BACKLOG} followed jobs",
        ),
        Figure(
            FAMILY,
            "web RSS growth, 1,000 sockets come and go",
            f"{len(rss) - 1} cycles after warm-up",
            "%",
            growth,
            None,
            "",
            (at_most(5.0, "%"),),
            f"RSS {cold:.1f} MiB before any socket; {rss[0]:.1f} MiB after the warm-up cycle, "
            f"then {' → '.join(f'{r:.1f}' for r in rss[1:])} MiB",
        ),
    ]
