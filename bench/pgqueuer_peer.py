"""The peer, run in its own process: PgQueuer's throughput benchmark on our database.

`python -m bench.pgqueuer_peer URL --runs 1x10 5x10 1x1 --seconds 4 --rounds 2` prints one JSON
line per run (DEQUEUERSxBATCH): {"dequeuers", "batch", "jobs", "seconds", "rate"}. It follows
PgQueuer's tools/benchmark.py ("throughput" strategy): one producer enqueuing batches of 10 back
to back, `dequeuers` PgQueuer instances dequeuing up to `batch` jobs a claim (its benchmark's
10, or 1 as our worker claims without --max-batch), each on its own psycopg connection, jobs
spread over two no-op entrypoints (both async: PgQueuer 1.6 refuses sync ones); the rate counts
jobs whose entrypoint ran within the timer. The event loop is asyncio's own, as for our figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from itertools import count
from typing import Any

import psycopg

BATCH = 10


async def _connect(url: str) -> Any:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def install(url: str) -> None:
    from pgqueuer import PsycopgDriver, Queries

    conn = await _connect(url)
    try:
        queries = Queries(PsycopgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
    finally:
        await conn.close()


async def one_run(url: str, dequeuers: int, batch: int, seconds: float) -> dict[str, Any]:
    from pgqueuer import Job, PgQueuer, PsycopgDriver, Queries

    setup = await _connect(url)
    queries = Queries(PsycopgDriver(setup))
    await queries.clear_statistics_log()
    await queries.clear_queue()
    done = 0
    shutdown = asyncio.Event()
    conns = [await _connect(url) for _ in range(dequeuers + 1)]
    managers = []
    for conn in conns[:dequeuers]:
        pgq = PgQueuer(PsycopgDriver(conn))

        @pgq.entrypoint("asyncfetch")  # type: ignore[untyped-decorator, unused-ignore]
        async def asyncfetch(job: Job) -> None:
            nonlocal done
            done += 1

        @pgq.entrypoint("syncfetch")  # type: ignore[untyped-decorator, unused-ignore]
        async def syncfetch(job: Job) -> None:
            nonlocal done
            done += 1

        managers.append(pgq)
    producer_queries = Queries(PsycopgDriver(conns[-1]))
    numbers = count()

    async def produce() -> None:
        entrypoints = ["syncfetch", "asyncfetch"] * BATCH
        while not shutdown.is_set():
            await producer_queries.enqueue(
                random.sample(entrypoints, k=BATCH),
                [f"{next(numbers)}".encode() for _ in range(BATCH)],
                [0] * BATCH,
            )

    async def timer() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shutdown.wait(), seconds)
        shutdown.set()
        for pgq in managers:
            pgq.shutdown.set()

    started = time.perf_counter()
    elapsed = 0.0
    ran = 0

    async def stamp_when_stopped() -> None:
        nonlocal elapsed, ran
        await shutdown.wait()
        elapsed, ran = time.perf_counter() - started, done

    await asyncio.gather(
        *(pgq.run(batch_size=batch) for pgq in managers),
        produce(),
        timer(),
        stamp_when_stopped(),
    )
    for conn in conns:
        await conn.close()
    await setup.close()
    return {
        "dequeuers": dequeuers,
        "batch": batch,
        "jobs": ran,
        "seconds": elapsed,
        "rate": ran / elapsed,
    }


async def main_async(args: argparse.Namespace) -> None:
    await install(args.url)
    for _ in range(args.rounds):
        for dequeuers, batch in args.runs:
            result = await one_run(args.url, dequeuers, batch, args.seconds)
            print(json.dumps(result), flush=True)


def _run_shape(text: str) -> tuple[int, int]:
    """DEQUEUERSxBATCH, e.g. 1x10."""
    dequeuers, _, batch = text.partition("x")
    return int(dequeuers), int(batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--runs", type=_run_shape, nargs="+", default=[(1, BATCH), (5, BATCH)])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
