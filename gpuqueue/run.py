"""`gpuqueue run`: everything in one command (what `make run` calls).

Applies the migrations, creates an admin token for the local user and prints
`open: http://HOST:PORT/?token=TOKEN`, serves the web app in this process, and runs one worker
as a child process, restarted (with backoff) if it ever exits on its own. Ctrl-C or SIGTERM
stops it all: SIGTERM to the worker (it finishes or hands back its job), then the web server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import sys
import time

from aiohttp import web

from queueing import db, tokens
from queueing.config import BUILTIN_MODEL, Settings
from queueing.migrate import migrate
from web.app import create_app
from web.server import make_runner

log = logging.getLogger(__name__)

TINY_MODEL_SIZE = 64  # the tiny default diffusers model draws 64x64 images in a blink
RESTART_BACKOFF_S = (1.0, 30.0)  # first delay, cap; doubles while the worker keeps dying
HEALTHY_RUN_S = 60.0  # a worker that ran this long resets the backoff


def run_all(args: argparse.Namespace, settings: Settings, url: str) -> int:
    return asyncio.run(_run(args, settings, url))


def run_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """The web serves the worker's model by default, and the tiny default model makes small
    images the sensible default, unless told otherwise."""
    if "default_model" not in settings.given:
        settings = dataclasses.replace(settings, default_model=args.model)
    tiny = args.backend == "diffusers" and args.model == BUILTIN_MODEL
    if tiny and "default_size" not in settings.given:
        settings = dataclasses.replace(settings, default_size=TINY_MODEL_SIZE)
    return settings


def page_url(host: str, port: int, token: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/?token={token}"


async def _run(args: argparse.Namespace, settings: Settings, url: str) -> int:
    settings = run_settings(args, settings)
    applied = await migrate(url, settings.migrations_dir)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    conn = await db.connect(url, "gpuqueue-run")
    try:
        token = await tokens.create_token(conn, args.user, admin=True)
    finally:
        await conn.close()

    runner = make_runner(create_app(settings, url))
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
    except OSError as exc:
        print(f"gpuqueue run: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        await runner.cleanup()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Only now: a Ctrl-C right after the line stops the run in order, too.
    print(f"open: {page_url(args.host, args.port, token)}", flush=True)
    worker = WorkerSupervisor(worker_command(args), url, grace_s=settings.grace_s)
    supervising = asyncio.create_task(worker.run(stop))
    try:
        await stop.wait()
        log.info("stopping: the worker first, then the web server")
    finally:
        await worker.stop()
        supervising.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervising
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def worker_command(args: argparse.Namespace) -> list[str]:
    """The database URL travels in the environment (DATABASE_URL), not on the command line,
    where `ps` would show a password."""
    command = [sys.executable, "-m", "gpuqueue.cli"]
    if getattr(args, "log_level", None):
        command += ["--log-level", str(args.log_level)]
    command += ["worker", "--device", args.device, "--backend", args.backend]
    command += ["--model", args.model]
    if args.max_batch is not None:
        command += ["--max-batch", str(args.max_batch)]
    command += ["--dtype", args.dtype, "--offload", args.offload, "--attention", args.attention]
    command += ["--vae-tiling" if args.vae_tiling else "--no-vae-tiling"]
    command += ["--compile" if args.compile else "--no-compile"]
    if args.variant:
        command += ["--variant", args.variant]
    if args.host_id:
        command += ["--host-id", args.host_id]
    return command


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it if this process dies without stopping it (Linux;
    the parent is the thread that started it)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WorkerSupervisor:
    """Runs the worker process; restarts it with backoff if it exits while we are not stopping."""

    def __init__(self, command: list[str], url: str, *, grace_s: float) -> None:
        self.command = command
        self.url = url
        self.grace_s = grace_s
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._stopping = False

    async def _start(self) -> asyncio.subprocess.Process:
        env = {**os.environ, "DATABASE_URL": self.url}
        preexec = die_with_parent if sys.platform.startswith("linux") else None
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the worker in order
            preexec_fn=preexec,
        )
        self.starts += 1
        log.info("worker started (pid %d)", self.process.pid)
        return self.process

    async def run(self, stop: asyncio.Event) -> None:
        delay = RESTART_BACKOFF_S[0]
        while not (self._stopping or stop.is_set()):
            started = time.monotonic()
            process = await self._start()
            code = await process.wait()
            if self._stopping or stop.is_set():
                return
            ran = time.monotonic() - started
            if ran >= HEALTHY_RUN_S:
                delay = RESTART_BACKOFF_S[0]
            log.warning(
                "the worker exited with code %s after %.1f s; restarting in %.1f s",
                code,
                ran,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, RESTART_BACKOFF_S[1])

    async def stop(self) -> int | None:
        """SIGTERM, then wait for the job in hand to finish or be handed back; SIGKILL at last."""
        self._stopping = True
        process = self.process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.grace_s + 15.0):
                return await process.wait()
        except TimeoutError:
            log.error("the worker did not stop within %.0f s; killing it", self.grace_s + 15.0)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()
