"""Where the benchmark runs: its own databases on the tests' server, and the processes it starts.

Every family gets a fresh migrated database named gq_bench_<family>_<hex>, dropped when the
family ends (also on an error), so `make run`'s data is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from bench.queries import BENCH_SQL
from harness import databases
from harness.children import Child
from harness.commands import WebChild, WorkerChild
from harness.waiting import eventually
from queueing import db, tokens
from queueing.actors import Actor
from queueing.config import BUILTIN_MODEL
from queueing.conversations import create_conversation
from queueing.migrate import migrate

APP = "gpuqueue-bench"


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class User:
    actor: Actor
    token: str
    conversation_id: UUID


@dataclass
class BenchDb:
    """A migrated database of one family, with one user, its token and one conversation."""

    url: str
    name: str
    actor: Actor
    token: str
    conversation_id: UUID

    async def connect(self, app: str = APP) -> db.Connection:
        return await db.connect(self.url, app)

    async def new_conversation(self, conn: db.Db, title: str = "bench") -> UUID:
        row = await create_conversation(conn, actor=self.actor, title=title)
        return UUID(str(row["id"]))

    async def new_user(self, conn: db.Db, name: str) -> User:
        """Another user with a conversation of its own (per-user queue counts stay realistic)."""
        token = await tokens.create_token(conn, name)
        actor = await tokens.authenticate(conn, token)
        assert actor is not None
        row = await create_conversation(conn, actor=actor, title=name)
        return User(actor, token, UUID(str(row["id"])))


@dataclass
class Context:
    """What every family gets: the server, the run's options, a scratch folder, the notes."""

    admin_url: str
    quick: bool
    scratch: Path
    notes: list[str] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def database(self, family: str) -> AsyncIterator[BenchDb]:
        name = databases.unique_name(f"gq_bench_{family}")
        url = databases.create_database(self.admin_url, name)
        try:
            await migrate(url)
            conn = await db.connect(url, APP)
            try:
                token = await tokens.create_token(conn, "bench")
                actor = await tokens.authenticate(conn, token)
                assert actor is not None
                row = await create_conversation(conn, actor=actor, title="bench")
            finally:
                await conn.close()
            yield BenchDb(url, name, actor, token, UUID(str(row["id"])))
        finally:
            databases.drop_database(self.admin_url, name)


# -- SQL helpers ------------------------------------------------------------------------------


async def execute(conn: db.Connection, name: str, params: Mapping[str, Any] | None = None) -> None:
    await conn.execute(BENCH_SQL[name], params)


async def fetch(
    conn: db.Connection,
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    prepare: bool | None = None,
) -> list[dict[str, Any]]:
    cur = await conn.execute(BENCH_SQL[name], params, prepare=prepare)
    return await cur.fetchall() if cur.rownumber is not None else []  # as db.fetch_all


async def fetch_row(
    conn: db.Connection, name: str, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    rows = await fetch(conn, name, params)
    assert rows, f"bench query {name} returned no row"
    return rows[0]


async def seed(
    bdb: BenchDb,
    n: int,
    *,
    status: str,
    prompt: str = "seeded",
    params: Mapping[str, Any] | None = None,
    high_priority_share: float = 0.0,
    conversation_id: UUID | None = None,
    connections: int = 1,
    wake: bool = False,
    seed_base: int | None = None,
    model: str = BUILTIN_MODEL,
    host: str | None = None,
) -> float:
    """Insert n jobs (with messages) of `model` in `status`; returns the seconds it took.

    Finished jobs ran on `host` (None: none; with a host they feed the cost model). Big seeds
    run on several connections at once with foreign-key triggers off.
    """
    started = time.perf_counter()
    replica = n >= 10_000
    shares = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]

    async def one(count: int) -> None:
        if count == 0:
            return
        conn = await bdb.connect()
        try:
            if replica:
                # Not a superuser: the same rows, with the foreign-key checks.
                with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                    await execute(conn, "replica_role")
            await execute(
                conn,
                "seed_jobs",
                {
                    "n": count,
                    "status": status,
                    "prompt": prompt,
                    "params": Jsonb(dict(params or {})),
                    "high_priority_share": high_priority_share,
                    "conversation_id": conversation_id or bdb.conversation_id,
                    "user_id": bdb.actor.user_id,
                    "seed_base": seed_base,
                    "model": model,
                    "host": host,
                },
            )
            if wake:
                await execute(conn, "wake_workers", {"model": model})
        finally:
            await conn.close()

    await asyncio.gather(*(one(count) for count in shares))
    return time.perf_counter() - started


async def vacuum(bdb: BenchDb) -> None:
    conn = await bdb.connect()
    try:
        await execute(conn, "vacuum_queue")
    finally:
        await conn.close()


async def wait_batch(
    bdb: BenchDb, prompt: str, n: int, *, limit_s: float, interval_s: float = 0.05
) -> float:
    """Wait until n jobs tagged `prompt` are complete; their GPU span in seconds (database
    clock, so `interval_s`, the polling cadence, only sets how soon the wait notices)."""
    conn = await bdb.connect()
    try:

        async def probe() -> dict[str, Any] | None:
            row = await fetch_row(conn, "batch_progress", {"prompt": prompt})
            if row["failed"]:
                raise RuntimeError(f"{row['failed']} job(s) of batch {prompt!r} failed")
            return row if row["complete"] >= n else None

        row = await eventually(
            probe, within=limit_s, interval=interval_s, what=f"{n} complete jobs of {prompt!r}"
        )
        assert row is not None
        return float(row["span_s"])
    finally:
        await conn.close()


class WaitSampler:
    """Samples pg_stat_activity every few milliseconds while a figure runs, for its note:
    the share of its connections' time spent running, waiting on a lock, or flushing WAL."""

    def __init__(self, bdb: BenchDb, application_name: str, interval_s: float = 0.01) -> None:
        self._bdb = bdb
        self._app = application_name
        self._interval_s = interval_s
        self.counts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WaitSampler:
        conn = await self._bdb.connect("gpuqueue-bench-probe")

        async def sample() -> None:
            try:
                while True:
                    for row in await fetch(conn, "wait_sample", {"application_name": self._app}):
                        key = str(row["activity"])
                        self.counts[key] = self.counts.get(key, 0) + 1
                    await asyncio.sleep(self._interval_s)
            finally:
                await conn.close()

        self._task = asyncio.create_task(sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- processes ------------------------------------------------------------------------------

# How long a child the benchmark started has to exit after SIGTERM, before SIGKILL.
STOP_GRACE_S = 20.0


def start(
    ctx: Context,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pipes: bool = False,
) -> Child:
    """Start `python argv...`, its log in the scratch folder as `name`.log (see Child)."""
    log_path = ctx.scratch / f"{name}.log"
    return Child(argv, log_path, env=env, pipes=pipes, grace_s=STOP_GRACE_S)


async def ask(child: Child, command: dict[str, Any] | None, limit_s: float) -> dict[str, Any]:
    """One JSON line to a helper started with pipes (none when `command` is None), and its
    answer, the next JSON line it writes."""
    if command is not None:
        child.write_line(json.dumps(command))
    line = await child.read_line(limit_s)
    if line is None:
        raise RuntimeError(f"{child.name} ended:\n{child.log_tail()}")
    answer: dict[str, Any] = json.loads(line)
    return answer


def _data_dir(ctx: Context) -> dict[str, str]:
    return {"GPUQUEUE_DATA_DIR": str(ctx.scratch / "data")}


async def start_worker(
    ctx: Context,
    bdb: BenchDb,
    *,
    device: str,
    backend: str,
    env: Mapping[str, str] | None = None,
    limit_s: float = 120.0,
) -> WorkerChild:
    """`gpuqueue worker` in a subprocess, returned once it is registered and idle."""
    child = WorkerChild(
        bdb.url,
        ctx.scratch / f"worker-{device}.log",
        device=device,
        backend=backend,
        env={**_data_dir(ctx), **(env or {})},
        grace_s=STOP_GRACE_S,
    )
    try:
        conn = await bdb.connect()
        try:
            await child.registered(conn, within=limit_s)
        finally:
            await conn.close()
    except BaseException:
        await child.stop()
        raise
    return child


async def start_web(
    ctx: Context, bdb: BenchDb, *, env: Mapping[str, str] | None = None
) -> WebChild:
    """`gpuqueue web` in a subprocess on a free port, returned once /healthz answers 200."""
    child = WebChild(
        bdb.url,
        ctx.scratch / "web.log",
        env={**_data_dir(ctx), **(env or {})},
        grace_s=STOP_GRACE_S,
    )
    try:
        await child.ready()
    except BaseException:
        await child.stop()
        raise
    return child
