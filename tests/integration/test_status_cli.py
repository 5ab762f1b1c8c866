"""`gpuqueue status` (issue 4, item 7): counts per status, the queue in order with positions and
ETAs, live workers with their device, current job and GPU lock time, the oldest queued age; a
table for people and --json for scripts."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gpuqueue.status import CLEAR_SCREEN, render, show_status
from harness.children import Child
from harness.commands import gpuqueue_argv
from queueing import db, jobs
from queueing.actors import Actor
from queueing.conversations import create_conversation
from queueing.jobs import JobRequest
from tests.integration.web_support import PARAMS, HandWorker, User, make_user
from tests.integration.worker_support import submit


@pytest.fixture
async def busy_queue(database_url: str, pool: db.Pool) -> AsyncIterator[tuple[User, HandWorker]]:
    """Five jobs: one complete, one running on a hand worker, three queued (one urgent)."""
    alice = await make_user(pool, "alice")
    root = await make_user(pool, "root", admin=True)
    conversation_id = (await create_conversation(pool, actor=alice.actor))["id"]
    for i in range(4):
        await jobs.enqueue(
            pool,
            conversation_id,
            JobRequest(f"prompt {i}", PARAMS),
            actor=alice.actor,
            max_queued=100,
        )
    worker = await HandWorker(database_url).start()
    await worker.complete(await worker.claim())
    await worker.claim()
    await jobs.enqueue(
        pool,
        conversation_id,
        JobRequest("urgent", PARAMS, priority=9),
        actor=root.actor,
        max_queued=100,
    )
    yield alice, worker
    await worker.close()


async def test_status_as_json_tells_the_whole_story(
    database_url: str, busy_queue: tuple[User, HandWorker]
) -> None:
    """--json: counts per status, the queue in claim order (priority first) with positions and
    ETAs, the worker holding the GPU lock with its job, and the oldest queued age."""
    _, worker = busy_queue
    out = io.StringIO()
    assert await show_status(database_url, as_json=True, out=out) == 0
    data = json.loads(out.getvalue())
    assert data["counts"] == {
        "pending": 0,
        "queued": 3,
        "processing": 1,
        "complete": 1,
        "error": 0,
        "canceled": 0,
    }
    queue = data["queue"]
    assert [j["queue_position"] for j in queue] == [1, 2, 3]
    assert [j["prompt"] for j in queue] == ["urgent", "prompt 2", "prompt 3"]
    assert [j["user"] for j in queue] == ["alice"] * 3  # the conversation's owner
    assert all(isinstance(j["eta_s"], float) for j in queue)
    assert queue[0]["eta_s"] <= queue[1]["eta_s"] <= queue[2]["eta_s"]
    [live] = data["workers"]
    assert live["worker_id"] == str(worker.worker_id) and live["device"] == "cpu"
    assert live["host"] == "test-host"
    assert live["job_id"] is not None and live["lock_held_s"] >= 0
    assert data["oldest_queued_s"] >= 0


async def test_status_as_a_table(database_url: str, busy_queue: tuple[User, HandWorker]) -> None:
    """The table: a line of counts, the oldest queued age, the queue and the workers."""
    _, worker = busy_queue
    out = io.StringIO()
    assert await show_status(database_url, out=out) == 0
    text = out.getvalue()
    assert "queued 3" in text and "processing 1" in text and "complete 1" in text
    assert "oldest queued:" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["pos", "job"])
    assert [line.split()[0] for line in lines[header + 1 : header + 4]] == ["1", "2", "3"]
    assert "urgent" in lines[header + 1]
    assert str(worker.worker_id)[:8] in text and "GPU lock held" in text


def test_a_lock_held_too_long_is_flagged() -> None:
    """R2.5 for operators: a GPU lock held longer than the warning threshold stands out."""
    data = {
        "counts": dict.fromkeys(
            ("pending", "queued", "processing", "complete", "error", "canceled"), 0
        ),
        "oldest_queued_s": None,
        "models": [],
        "queue": [],
        "workers": [
            {
                "worker_id": "abcdef0123",
                "host": "box",
                "device": "cuda:0",
                "backend": "stub",
                "model": "tiny",
                "hostname": "box",
                "pid": 7,
                "job_id": "0123456789",
                "lock_held_s": 95.0,
            }
        ],
    }
    text = render(data, lock_warn_s=30)
    assert "1m35s (over 30s!)" in text and "(empty)" in text


async def test_the_command_line_prints_json(database_url: str) -> None:
    """`gpuqueue status --json` through the real command line exits 0 and prints JSON."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpuqueue.cli",
        "--database-url",
        database_url,
        "status",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout)["counts"]["queued"] == 0


async def test_an_unreachable_database_is_exit_1(tmp_path: object) -> None:
    """Status says so, and exits 1, when the database does not answer."""
    url = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    assert await show_status(url, out=io.StringIO()) == 1


async def test_watch_redraws_every_second_and_ctrl_c_exits_0(
    database_url: str, pool: db.Pool, alice: Actor, conversation_id: str, tmp_path: Path
) -> None:
    """Issue 15, item 5: `gpuqueue status --watch` clears the screen and draws the table again
    each second, read afresh each time (a job queued meanwhile shows), until Ctrl-C (SIGINT),
    which ends it with exit code 0."""
    watch = Child(
        gpuqueue_argv(database_url, "status", "--watch"), tmp_path / "watch.log", pipes=True
    )
    screens: list[list[str]] = []  # each one's lines

    async def screen_showing(text: str) -> list[str]:
        """Read until a screen that contains `text` has been drawn in full (the next began)."""
        while True:
            line = await watch.read_line(within=15)
            assert line is not None, watch.log_tail()
            if line.startswith(CLEAR_SCREEN):
                if screens and any(text in x for x in screens[-1]):
                    return screens[-1]
                screens.append([line.removeprefix(CLEAR_SCREEN)])
            elif screens:
                screens[-1].append(line)

    try:
        first = await screen_showing("queued 0")
        assert first[0].startswith("gpuqueue status every 1s, Ctrl-C to stop")
        assert "workers (0 live)" in first
        await submit(pool, conversation_id, alice)
        later = await screen_showing("queued 1")
        assert any(line.startswith("queue of tiny (1 queued") for line in later), later
        assert any(line.endswith("a red fox") for line in later), later
        # Each heading ends with the time it was drawn: a second apart at least, so distinct.
        drawn = [lines[0].rsplit(" ", 1)[1] for lines in screens]
        assert len(set(drawn)) == len(drawn) >= 2, drawn
        watch.signal(signal.SIGINT)
        assert await watch.wait(within=10) == 0
        assert "Traceback" not in watch.log()
    finally:
        await watch.stop()
