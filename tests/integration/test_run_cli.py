"""`gpuqueue run` (issue 4, item 6; contract: Setup): migrations, a token printed as the open:
line, the web server and one worker; a job completes; SIGINT stops everything with exit 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest

from gpuqueue.cli import build_parser
from gpuqueue.client import Client
from gpuqueue.run import page_url, run_settings
from harness.ports import free_port
from harness.waiting import eventually
from queueing import db, workers
from queueing.config import Settings

OPEN_LINE = re.compile(r"^open: http://127\.0\.0\.1:(\d+)/\?token=(gq_[A-Za-z0-9_-]+)$")


def test_the_tiny_default_model_makes_small_images_the_default() -> None:
    """`gpuqueue run` with diffusers and no --model (the tiny model) defaults images to 64x64;
    a real model, another backend or GPUQUEUE_DEFAULT_SIZE keep the configured size."""
    settings = Settings(default_size=512)

    def size(*argv: str) -> int:
        return run_settings(build_parser().parse_args(["run", *argv]), settings).default_size

    assert size("--backend", "diffusers") == 64
    assert size("--backend", "diffusers", "--model", "some/model") == 512
    assert size("--backend", "stub") == 512
    settings = Settings.from_env({"GPUQUEUE_DEFAULT_SIZE": "512"})
    assert size("--backend", "diffusers") == 512  # the env var already set settings


def test_the_open_line_names_a_reachable_address() -> None:
    """The open: URL points at the loopback address when the server listens everywhere."""
    assert page_url("127.0.0.1", 8080, "gq_x") == "http://127.0.0.1:8080/?token=gq_x"
    assert page_url("0.0.0.0", 9000, "gq_x") == "http://127.0.0.1:9000/?token=gq_x"
    assert page_url("::1", 80, "gq_x") == "http://[::1]:80/?token=gq_x"


async def start_run(
    database_url: str, port: int, *, log_level: str, console: bool = False
) -> asyncio.subprocess.Process:
    """`gpuqueue run` with the stub backend; `console`: stderr (the log) joins stdout, as a
    terminal shows them."""
    env = {
        **os.environ,
        "GPUQUEUE_STUB_DELAY": "0.01",
        "PYTHONPATH": os.getcwd(),
        "GPUQUEUE_LOG_LEVEL": log_level,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpuqueue.cli",
        "--database-url",
        database_url,
        "run",
        "--backend",
        "stub",
        "--port",
        str(port),
        "--user",
        "tester",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if console else None,
        env=env,
    )


@pytest.mark.slow
async def test_run_says_one_line_per_step_before_the_open_line(database_url: str) -> None:
    """The newcomer's console, at the default log level: a line or two per step, then open:."""
    process = await start_run(database_url, free_port(), log_level="INFO", console=True)
    assert process.stdout is not None
    before: list[str] = []
    try:
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            assert line, before  # the run ended before its open: line
            if line.startswith("open:"):
                break
            before.append(line)
        assert len(before) <= 3, "".join(before)
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
async def test_run_serves_the_page_runs_a_job_and_stops_cleanly_on_sigint(
    database_url: str, pool: db.Pool
) -> None:
    """Contract: `gpuqueue run` prints `open: http://127.0.0.1:PORT/?token=TOKEN`, the page and
    API answer with that token, a submitted job completes on the worker it started, a worker
    that dies is restarted, and Ctrl-C (SIGINT) stops worker and server with exit code 0."""
    port = free_port()
    process = await start_run(database_url, port, log_level="WARNING")
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().strip()
        match = OPEN_LINE.match(line)
        assert match, line
        assert int(match.group(1)) == port
        token = match.group(2)
        base = f"http://127.0.0.1:{port}"
        async with Client(base, token) as gq:
            async with gq.session.get(f"{base}/?token={token}") as page:
                assert page.status == 200 and page.content_type == "text/html"
            me = await gq.request("GET", "/api/me")
            assert me == {**me, "user": "tester", "is_admin": True}
            conversation = await gq.create_conversation()
            job = await gq.submit(conversation["id"], "a test")
            # The stub backend gives no tiny-model size: the default stays 512 unless diffusers.
            assert job["params"]["width"] == 512
            assert (await gq.wait(job["job_id"], timeout=60))["status"] == "complete"
            [first] = await workers.live_workers(pool)

        # A worker that dies is started again.
        os.kill(first["pid"], signal.SIGKILL)

        async def replaced() -> bool:
            live = await workers.live_workers(pool)
            return len(live) == 1 and live[0]["pid"] != first["pid"]

        await eventually(replaced, within=30, interval=0.1)

        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        assert await workers.live_workers(pool) == []
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
