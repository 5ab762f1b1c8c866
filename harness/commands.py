"""`gpuqueue web` and `gpuqueue worker` as children of the tests and the benchmark: the command
line each starts with, and what ready means for each (/healthz answers 200; the process has a
live registration). Flags go in `args` and settings in `env`, untouched, so a new flag of the
command needs nothing here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from harness.children import Child
from harness.ports import free_port
from queueing import db

# The live_workers view's rows, not queueing's API rows: tests read its id and session_pid.
REGISTRATION = "SELECT * FROM live_workers WHERE pid = %(pid)s ORDER BY started_at"


def gpuqueue_argv(database_url: str, command: str, *args: str) -> list[str]:
    """What follows `python` to run `gpuqueue --database-url URL COMMAND ARGS...`."""
    return ["-m", "gpuqueue.cli", "--database-url", database_url, command, *args]


class WebChild(Child):
    """`gpuqueue web` on a free port of 127.0.0.1, `args` after its own flags. A subclass may
    serve the same app another way by overriding `command`."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        grace_s: float = 5.0,
    ) -> None:
        self.port = free_port()
        argv = self.command(database_url, self.port, args)
        super().__init__(argv, log_path, env=env, grace_s=grace_s)

    def command(self, database_url: str, port: int, args: Sequence[str]) -> list[str]:
        """What follows `python` to serve on 127.0.0.1:`port`."""
        return gpuqueue_argv(database_url, "web", "--host", "127.0.0.1", "--port", str(port), *args)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def healthz(self, session: aiohttp.ClientSession) -> int:
        """The status /healthz answers (0 when nothing answers)."""
        try:
            async with session.get(
                f"{self.base_url}/healthz", timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def ready(self, within: float = 60.0) -> None:
        """Wait until /healthz answers 200."""
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                return await self.healthz(session) == 200

            await self.until(healthy, within=within, what=f"{self.name}: /healthz answers 200")


class WorkerChild(Child):
    """`gpuqueue worker --backend BACKEND --device DEVICE ARGS...`."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        device: str,
        backend: str = "stub",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        grace_s: float = 5.0,
    ) -> None:
        self.device = device
        flags = ("--backend", backend, "--device", device, *args)
        argv = gpuqueue_argv(database_url, "worker", *flags)
        super().__init__(argv, log_path, env=env, prefix=prefix, grace_s=grace_s)

    async def registered(self, conn: db.Db, within: float = 60.0) -> db.Row:
        """Wait until this process has a live registration; its latest (a live_workers row)."""

        async def probe() -> db.Row | None:
            async with db.connection(conn) as c:
                cur = await c.execute(REGISTRATION, {"pid": self.pid})
                found = await cur.fetchall()
            return found[-1] if found else None

        found = await self.until(probe, within=within, what=f"{self.name} registered")
        assert found is not None
        return found
