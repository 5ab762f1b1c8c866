"""The real command line as subprocesses: `gpuqueue web` servers (workers come from the worker
harness). Free ports, open-file limits, stopping and reading memory: harness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from harness.ports import free_port
from harness.processes import REPO, rss_kib, stop_process
from harness.waiting import eventually
from tests.integration.worker_support import WorkerProcess

__all__ = ["WebProcess", "WorkerProcess"]


class WebProcess:
    """`python -m gpuqueue.cli --database-url URL web --port P`, its log in a file. With
    `inspectable`, the same app served by tests/reliability/web_under_test.py, which adds a
    /_reliability/state route (live tasks, known clients) for leak checks."""

    def __init__(
        self, url: str, log_path: Path, env: dict[str, str] | None = None, *,
        inspectable: bool = False,
    ) -> None:  # fmt: skip
        self.url = url
        self.port = free_port()
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        command = (
            ["-m", "tests.reliability.web_under_test", url, str(self.port)] if inspectable else
            ["-m", "gpuqueue.cli", "--database-url", url, "web", "--host", "127.0.0.1",
             "--port", str(self.port)]
        )  # fmt: skip
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *command], cwd=REPO, env=full_env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log()[-chars:]

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    async def healthz(self, session: aiohttp.ClientSession) -> int:
        """The status /healthz answers (0 when nothing answers)."""
        try:
            async with session.get(f"{self.base_url}/healthz", timeout=aiohttp.ClientTimeout(
                total=5)) as response:  # fmt: skip
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def ready(self, within: float = 60.0) -> None:
        """Wait until /healthz answers 200."""
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                if not self.alive():
                    raise AssertionError(
                        f"web process exited {self.proc.returncode}:\n{self.log_tail()}"
                    )
                return await self.healthz(session) == 200

            try:
                await eventually(healthy, within=within, interval=0.05)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    async def state(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """An inspectable server's live tasks and clients, after a GC and malloc_trim."""
        async with session.get(f"{self.base_url}/_reliability/state") as response:
            assert response.status == 200, await response.text()
            found: dict[str, Any] = await response.json()
            return found

    def stop(self) -> None:
        stop_process(self.proc)
