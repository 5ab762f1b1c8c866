"""Where the benchmark runs: its own databases on the tests' server, and the processes it starts.

Every family gets a fresh migrated database named gq_bench_<family>_<hex>, dropped when the
family ends (also on an error), so `make run`'s data is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
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
from harness.ports import free_port
from harness.processes import rss_kib
from harness.waiting import eventually
from queueing import db, tokens
from queueing.actors import Actor
from queueing.conversations import create_conversation
from queueing.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
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
    return await cur.fetchall() if cur.description else []


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
) -> float:
    """Insert n jobs (with messages) in `status`; returns the seconds it took.

    Big seeds run on several connections at once with foreign-key triggers off.
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
                },
            )
            if wake:
                await execute(conn, "wake_workers")
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


async def wait_batch(bdb: BenchDb, prompt: str, n: int, *, limit_s: float) -> float:
    """Wait until n jobs tagged `prompt` are complete; their GPU span in seconds."""
    conn = await bdb.connect()
    try:

        async def probe() -> dict[str, Any] | None:
            row = await fetch_row(conn, "batch_progress", {"prompt": prompt})
            if row["failed"]:
                raise RuntimeError(f"{row['failed']} job(s) of batch {prompt!r} failed")
            return row if row["complete"] >= n else None

        row = await eventually(
            probe, within=limit_s, interval=0.05, what=f"{n} complete jobs of {prompt!r}"
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


# -- processes --------------------------------------------------------------------------------


@dataclass
class Child:
    """A process the benchmark started: its log goes to a file in the scratch folder."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        return rss_kib(self.pid) / 1024

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    async def stop(self, limit_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `limit_s` seconds; returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), limit_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


async def start(
    ctx: Context,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    pipes: bool = False,
) -> Child:
    """Start `python argv...` from the repository root; stdout/stdin piped when `pipes`."""
    log_path = ctx.scratch / f"{name}.log"
    log_file = log_path.open("ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipes else log_file,
            stderr=log_file,
        )
    finally:
        log_file.close()
    return Child(name, proc, log_path)


@contextlib.asynccontextmanager
async def running(child: Child) -> AsyncIterator[Child]:
    try:
        yield child
    finally:
        await child.stop()


async def start_worker(
    ctx: Context,
    bdb: BenchDb,
    *,
    device: str,
    backend: str,
    env: Mapping[str, str] | None = None,
    limit_s: float = 120.0,
) -> Child:
    """`gpuqueue worker` in a subprocess, returned once it is registered and idle."""
    child = await start(
        ctx,
        f"worker-{device}",
        [
            "-m",
            "gpuqueue.cli",
            "--database-url",
            bdb.url,
            "worker",
            "--device",
            device,
            "--backend",
            backend,
        ],
        env={"GPUQUEUE_DATA_DIR": str(ctx.scratch / "data"), **(env or {})},
    )
    conn = await bdb.connect()
    try:

        async def registered() -> bool:
            child.check_alive()
            row = await fetch_row(conn, "live_worker_count", {"device": device})
            return bool(row["workers"])

        await eventually(registered, within=limit_s, interval=0.1, what=f"worker on {device}")
    except BaseException:
        await child.stop()
        raise
    finally:
        await conn.close()
    return child


async def start_web(
    ctx: Context, bdb: BenchDb, *, env: Mapping[str, str] | None = None
) -> tuple[Child, str]:
    """`gpuqueue web` in a subprocess on a free port; returns it and its base URL once healthy."""
    import aiohttp

    port = free_port()
    child = await start(
        ctx,
        "web",
        [
            "-m",
            "gpuqueue.cli",
            "--database-url",
            bdb.url,
            "web",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={"GPUQUEUE_DATA_DIR": str(ctx.scratch / "data"), **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                child.check_alive()
                try:
                    async with session.get(f"{base}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(healthy, within=60, interval=0.1, what="gpuqueue web /healthz")
    except BaseException:
        await child.stop()
        raise
    return child, base
