"""`gpuqueue.client` against a real `gpuqueue web` and a real stub worker (issue 15, item 3):
submit, job, move, cancel and wait; typed errors with the server's codes; events() that comes
back by itself after its connection is cut or its web process is killed, losing and repeating
nothing. And the worker's JSON log lines (item 5), read from the same worker's stderr."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpuqueue import cli
from gpuqueue.client import (
    FINAL_STATUSES,
    Client,
    Conflict,
    EventStream,
    Invalid,
    NotFound,
    Unauthorized,
)
from harness.commands import WebChild, WorkerChild
from harness.ports import free_port
from harness.waiting import eventually
from queueing import db, tokens
from tests.integration.web_support import stored_events
from tests.integration.worker_support import status_of


class WebOnPort(WebChild):
    """`gpuqueue web` on a port given, so a web process started again is where its clients
    look for it."""

    def __init__(self, database_url: str, log_path: Path, port: int) -> None:
        self._given_port = port
        super().__init__(database_url, log_path)

    def command(self, database_url: str, port: int, args: Any) -> list[str]:
        self.port = self._given_port
        return super().command(database_url, self._given_port, args)


@dataclass
class Served:
    database_url: str
    web: WebChild
    worker: WorkerChild
    token: str
    worker_id: str
    logs: Path


@pytest.fixture
async def served(database_url: str, pool: db.Pool, tmp_path: Path) -> AsyncIterator[Served]:
    """A web process and a stub worker (0.2 s a job, JSON logs) on the test's database."""
    web = WebOnPort(database_url, tmp_path / "web.log", free_port())
    worker = WorkerChild(
        database_url,
        tmp_path / "worker.log",
        device="cpu",
        env={
            "GPUQUEUE_STUB_DELAY": "0.2",
            "GPUQUEUE_POLL_INTERVAL_S": "0.2",
            "GPUQUEUE_GPU_LOCK_DIR": str(tmp_path / "gpu-locks"),
            "GPUQUEUE_LOG_FORMAT": "json",
        },
    )
    try:
        registration = await worker.registered(pool)
        await web.ready()
        token = await tokens.create_token(pool, "alice")
        yield Served(database_url, web, worker, token, str(registration["id"]), tmp_path)
    finally:
        await worker.kill()
        await web.kill()


async def test_submit_move_cancel_and_wait_through_the_client(served: Served) -> None:
    """Each call answers the server's JSON: submit queues (202), move puts a queued job first
    among the owner's, cancel ends a queued job at once and a running one through its worker,
    and wait follows the WebSocket until the job's final state, or raises TimeoutError."""
    async with Client(served.web.base_url, served.token) as gq:
        conversation = (await gq.create_conversation("client"))["id"]
        running = await gq.submit(conversation, "[hang] hold the GPU", steps=2)

        async def started() -> bool:
            return bool((await gq.job(running["job_id"]))["status"] == "processing")

        await eventually(started, within=10)
        first = await gq.submit(conversation, "first", width=64, height=64, seed=7)
        second = await gq.submit(conversation, "second", width=64, height=64)
        assert (first["status"], first["queue_position"], first["params"]["seed"]) == (
            "queued",
            1,
            7,
        )
        with pytest.raises(TimeoutError):
            await gq.wait(first["job_id"], timeout=0.3)  # the GPU is held: it cannot end

        moved = await gq.move(second["job_id"])
        assert moved["queue_position"] == 1
        assert (await gq.job(first["job_id"]))["queue_position"] == 2

        assert (await gq.cancel(first["job_id"]))["status"] == "canceled"
        stopping = await gq.cancel(running["job_id"])  # the worker stops it within ~3 s, or
        assert stopping["status"] == "canceled" or stopping["cancel_requested"]  # soon after
        assert (await gq.wait(running["job_id"], timeout=10))["status"] == "canceled"

        done = await gq.wait(second["job_id"], timeout=20)
        assert done["status"] == "complete" and done["image_url"]
        assert [t["status"] for t in done["transitions"]][-1] == "complete"
        again = await gq.wait(second["job_id"], timeout=5)  # already final: answered at once
        assert again["status"] == "complete"


async def test_refusals_raise_typed_errors_with_the_servers_codes(served: Served) -> None:
    """A 409, 404, 422 and 401 come back as Conflict, NotFound, Invalid and Unauthorized, each
    with the code and message the server sent; a refused subscription too (no status)."""
    async with Client(served.web.base_url, served.token) as gq:
        conversation = (await gq.create_conversation())["id"]
        job = await gq.submit(conversation, "quick", width=64, height=64, steps=1)
        await gq.wait(job["job_id"], timeout=20)
        with pytest.raises(Conflict) as conflict:
            await gq.cancel(job["job_id"])
        assert (conflict.value.status, conflict.value.code) == (409, "conflict")
        with pytest.raises(Conflict):
            await gq.move(job["job_id"])
        missing = str(uuid.uuid4())
        with pytest.raises(NotFound) as not_found:
            await gq.job(missing)
        assert (not_found.value.status, not_found.value.code) == (404, "not_found")
        with pytest.raises(Invalid) as unknown:
            await gq.submit(conversation, "x", colour="red")
        assert unknown.value.code == "unknown_fields" and "colour" in unknown.value.message
        with pytest.raises(NotFound) as refused:
            await gq.wait(missing, timeout=5)  # the WebSocket's refusal
        assert (refused.value.status, refused.value.code) == (None, "not_found")
    async with Client(served.web.base_url, "gq_not_a_token") as stranger:
        with pytest.raises(Unauthorized) as unauthorized:
            await stranger.job(job["job_id"])
        assert unauthorized.value.code == "unauthorized"
        with pytest.raises(Unauthorized):
            await anext(stranger.events(conversation_id=conversation))


class CuttingProxy:
    """A TCP proxy to a port: cut() drops every connection through it at once (RST), as a
    network that fails mid-stream does, while the server behind it goes on sending."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()

    def cut(self) -> int:
        """Abort every open connection; how many there were (both ends count)."""
        cut = [w for w in self._open if not w.transport.is_closing()]
        for writer in cut:
            writer.transport.abort()
        self._open.clear()
        return len(cut)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def follow_until_final(
    stream: EventStream,
    n_jobs: int,
    seen: list[dict[str, Any]],
    on_event: Callable[[int], None] = lambda _: None,
) -> None:
    """Collect the stream's transition events until `n_jobs` jobs have each reached a final
    state; `on_event(n)` after the n-th."""
    final: set[str] = set()
    async for frame in stream:
        if "seq" in frame:
            seen.append(frame)
            on_event(len(seen))
            if frame["status"] in FINAL_STATUSES:
                final.add(frame["job_id"])
                if len(final) == n_jobs:
                    return


async def subscribed(stream: EventStream, task: asyncio.Task[None]) -> None:
    async def live() -> bool:
        if task.done():
            task.result()
        return stream.last_seq is not None

    await eventually(live, within=10)


async def test_events_resume_after_sockets_are_cut_mid_stream(
    served: Served, pool: db.Pool
) -> None:
    """The stream's connection is cut at its 2nd, 7th and 12th event of 18 (six jobs, three
    transitions each) while the server goes on sending: it reconnects with since_seq by itself,
    and yields each stored event of the conversation once, in seq order."""
    hits: list[int] = []
    async with (
        Client(served.web.base_url, served.token) as gq,
        CuttingProxy(served.web.port) as proxy,
        Client(f"http://127.0.0.1:{proxy.port}", served.token) as follower,
    ):

        def cut_at(n: int) -> None:
            if n in (2, 7, 12):
                hits.append(proxy.cut())

        conversation = (await gq.create_conversation())["id"]
        stream = follower.events(conversation_id=conversation)
        seen: list[dict[str, Any]] = []
        following = asyncio.create_task(follow_until_final(stream, 6, seen, cut_at))
        await subscribed(stream, following)
        for i in range(6):
            await gq.submit(conversation, f"job {i}", width=64, height=64, steps=2)
        await asyncio.wait_for(following, 30)
        await stream.aclose()
    assert len(hits) == 3 and sum(1 for n in hits if n) >= 2, hits  # a cut between two
    assert stream.connections >= 1 + sum(1 for n in hits if n)  # connections may hit none
    assert [e["seq"] for e in seen] == await stored_events(pool, conversation)


async def test_events_resume_after_the_web_process_is_killed(served: Served, pool: db.Pool) -> None:
    """The web process is killed (SIGKILL) mid-stream and jobs finish while none runs; once a
    new one listens on the same address the stream catches up: no event lost, none repeated."""
    async with (
        Client(served.web.base_url, served.token) as gq,
        Client(served.web.base_url, served.token, reconnect_max_s=0.5) as follower,
    ):
        conversation = (await gq.create_conversation())["id"]
        stream = follower.events(conversation_id=conversation)
        seen: list[dict[str, Any]] = []
        following = asyncio.create_task(follow_until_final(stream, 5, seen))
        await subscribed(stream, following)
        jobs = [
            (await gq.submit(conversation, f"job {i}", width=64, height=64, steps=2))["job_id"]
            for i in range(5)
        ]

        async def one_complete() -> bool:
            return any(e["status"] == "complete" for e in seen)

        await eventually(one_complete, within=20)
        await served.web.kill()

        async def finished_while_down() -> bool:
            statuses = [await status_of(pool, job_id) for job_id in jobs]
            return statuses.count("complete") >= 3

        await eventually(finished_while_down, within=20)
        served.web = WebOnPort(served.database_url, served.logs / "web-2.log", served.web.port)
        await served.web.ready()
        await asyncio.wait_for(following, 30)
        await stream.aclose()
    assert stream.connections >= 2
    assert [e["seq"] for e in seen] == await stored_events(pool, conversation)


async def test_worker_logs_are_json_lines_naming_job_worker_and_gpu(served: Served) -> None:
    """GPUQUEUE_LOG_FORMAT=json: every line the worker writes is one JSON object with ts, level,
    logger and msg; its lines about a job (its end, a cancel the listener heard) carry job_id,
    worker_id, host, device and model. The web process, left at the default, writes text."""
    async with Client(served.web.base_url, served.token) as gq:
        conversation = (await gq.create_conversation())["id"]
        job = await gq.submit(conversation, "logged", width=64, height=64, steps=1)
        await gq.wait(job["job_id"], timeout=20)
        hung = await gq.submit(conversation, "[hang] canceled", width=64, height=64)

        async def started() -> bool:
            return bool((await gq.job(hung["job_id"]))["status"] == "processing")

        await eventually(started, within=10)
        await gq.cancel(hung["job_id"])
        await gq.wait(hung["job_id"], timeout=20)

    def lines() -> list[dict[str, Any]]:
        text = served.worker.log()
        written = text[: text.rfind("\n") + 1]  # not a line still being written
        return [json.loads(line) for line in written.splitlines() if line.strip()]

    async def completion_logged() -> dict[str, Any] | None:
        about_job = (x for x in lines() if x.get("job_id") == job["job_id"])
        return next((x for x in about_job if "complete" in x["msg"]), None)

    done = await eventually(completion_logged, within=10)
    assert done is not None
    assert {"ts", "level", "logger", "msg"} <= set(done)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", done["ts"])
    assert (done["level"], done["logger"]) == ("INFO", "gpu_worker.worker")
    assert (done["worker_id"], done["device"], done["model"]) == (served.worker_id, "cpu", "tiny")
    assert done["host"]

    async def cancel_logged() -> bool:  # the listener's line, then the end's
        about_hung = " | ".join(x["msg"] for x in lines() if x.get("job_id") == hung["job_id"])
        return "cancel requested" in about_hung and "canceled after" in about_hung

    await eventually(cancel_logged, within=10)
    registered = next(x for x in lines() if "registered on GPU" in x["msg"])
    assert registered["worker_id"] == served.worker_id and "job_id" not in registered
    listening = next(x for x in served.web.log().splitlines() if "web listening" in x)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO web\.server: ", listening)


def test_an_unknown_log_format_stops_the_command_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A GPUQUEUE_LOG_FORMAT other than text or json is refused before anything runs."""
    monkeypatch.setenv("GPUQUEUE_LOG_FORMAT", "xml")
    assert cli.main(["status"]) == 2
    assert "GPUQUEUE_LOG_FORMAT must be text or json, got 'xml'" in capsys.readouterr().err
