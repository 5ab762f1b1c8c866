"""The subprocesses the tests and the benchmark start: one API for both, so a process is started,
awaited, read and stopped the same way whoever drives it (harness/commands.py builds the
gpuqueue command lines on it)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from gpuqueue.run import die_with_parent
from harness.processes import REPO, rss_kib
from harness.waiting import eventually

T = TypeVar("T")


class ChildExited(AssertionError):
    """The child ended while it was waited on: an AssertionError, as every failed wait of the
    harness is, so a test fails on it like on any other unmet condition."""


class Child:
    """`python ARGV...` run from the repository root, started at construction, with its stderr
    (and its stdout, unless `pipes`) appended to `log_path`. Stopping it always reaps it.

    Started synchronously, so a fixture or a sync helper can start one; every wait on it is
    async and polls, so no event loop is bound to it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        pipes: bool = False,
        grace_s: float = 5.0,
    ) -> None:
        """`env` is added to this process's environment. `prefix` runs the command (e.g.
        unshare) and must exec it, so that pid is the child's. With `pipes`, its stdin and stdout
        are pipes (write_line, read_line). `grace_s`: how long stop waits after SIGTERM."""
        self.name = log_path.stem
        self.log_path = log_path
        self.grace_s = grace_s
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*prefix, sys.executable, *argv],
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log,
                # A test run that is killed (a timeout, Ctrl-C) leaves no server behind.
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (negative: the signal that ended it), else None."""
        return self._proc.poll()

    def alive(self) -> bool:
        return self.returncode is None

    def check_alive(self) -> None:
        """Raise ChildExited, with the log's tail, when the child has exited."""
        code = self.returncode
        if code is not None:
            raise ChildExited(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log().splitlines()[-lines:])
        except OSError:
            return ""

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` (nothing once the child is reaped)."""
        self._proc.send_signal(sig)

    async def until(
        self,
        probe: Callable[[], Awaitable[T]],
        *,
        within: float,
        interval: float = 0.05,
        what: str,
    ) -> T:
        """Poll `probe` until it returns something truthy (what ready means for this child); fail
        at once if the child exits first, and with the log's tail when `within` runs out."""

        async def while_alive() -> T:
            self.check_alive()
            return await probe()

        try:
            return await eventually(while_alive, within=within, interval=interval, what=what)
        except ChildExited:
            raise
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    async def wait(self, within: float = 15.0) -> int:
        """Wait for it to exit by itself; its exit code."""
        deadline = time.monotonic() + within
        while (code := self.returncode) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} ({self.pid}) still running:\n{self.log_tail()}")
            await asyncio.sleep(0.02)
        self._close_pipes()
        return code

    async def kill(self) -> int:
        """SIGKILL, reaped; its exit code (whatever it was, if it had already exited)."""
        self._proc.kill()
        return await self.wait(10)

    async def stop(self, grace_s: float | None = None) -> int:
        """SIGTERM, then SIGKILL if it is still running after `grace_s` (the child's own
        grace_s when not given); always reaped. Its exit code."""
        self._proc.send_signal(signal.SIGTERM)
        try:
            return await self.wait(self.grace_s if grace_s is None else grace_s)
        except AssertionError:
            return await self.kill()

    async def __aenter__(self) -> Child:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def write_line(self, line: str) -> None:
        """One line to its stdin (started with `pipes`)."""
        assert self._proc.stdin is not None, f"{self.name} was started without pipes"
        self._proc.stdin.write((line + "\n").encode())
        self._proc.stdin.flush()

    async def read_line(self, within: float) -> str | None:
        """The next line of its stdout (started with `pipes`), stripped; None once it closes
        its stdout. The read runs in a thread, so the event loop goes on meanwhile."""
        stdout = self._proc.stdout
        assert stdout is not None, f"{self.name} was started without pipes"
        try:
            raw = await asyncio.wait_for(asyncio.to_thread(stdout.readline), within)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} wrote no line in {within} s:\n{self.log_tail()}"
            ) from None
        return raw.decode().strip() if raw else None

    def _close_pipes(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()
