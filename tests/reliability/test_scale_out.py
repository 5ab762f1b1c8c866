"""Scale-out on one PostgreSQL (issue 15 item 4; README: Scaling out): two `gpuqueue web`
processes and stub workers on two simulated hosts (`unshare --uts`, else `--host-id`) share one
database. Every web process LISTENs and fans every event out to its own sockets, so a client
needs no sticky session: whichever web process it reaches, it sees every event of its
conversations, whichever web process accepted the job and whichever host ran it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.commands import WebChild, WorkerChild
from harness.waiting import eventually
from queueing import db, tokens
from tests.integration.worker_support import (
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    wait_all_final,
)
from tests.queries import fetch_all
from tests.reliability.test_fleet_hosts import on_host

SpawnWorker = Callable[..., WorkerChild]
TRANSITIONS = frozenset({"queued", "processing", "complete", "error", "canceled"})
FINAL = frozenset({"complete", "error", "canceled"})
HOSTS = ("host-a", "host-b")
JOBS_PER_CONVERSATION = 6
CAN_UNSHARE = shutil.which("unshare") is not None and os.geteuid() == 0


@dataclass
class Subscriber:
    """One WebSocket on one web process, subscribed to one conversation before its first job;
    it keeps every frame it is sent."""

    conversation_id: str
    base_url: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    def transitions(self) -> list[tuple[int, str, str]]:
        return [
            (int(f["seq"]), str(f["job_id"]), str(f["status"]))
            for f in self.frames
            if f.get("type") in TRANSITIONS
        ]

    def finished_jobs(self) -> set[str]:
        return {job for _, job, status in self.transitions() if status in FINAL}

    async def follow(self, session: aiohttp.ClientSession, token: str) -> None:
        """Subscribe, then read until the socket closes (or the task is canceled)."""
        async with session.ws_connect(f"{self.base_url}/ws", params={"token": token}) as ws:
            await ws.send_json({"op": "subscribe", "conversation_id": self.conversation_id})
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(message.data)
                self.frames.append(frame)
                if frame.get("type") == "subscribed":
                    self.subscribed.set()


@pytest.fixture
async def webs(database_url: str, tmp_path: Path) -> AsyncIterator[list[WebChild]]:
    """Two `gpuqueue web` processes on one database (small pools: the server is shared)."""
    env = {"GPUQUEUE_WEB_POOL_SIZE": "4"}
    started = [WebChild(database_url, tmp_path / f"web-{i}.log", env=env) for i in range(2)]
    try:
        yield started
    finally:
        for web in started:
            await web.stop()


def _worker_on(spawn_worker: SpawnWorker, host: str) -> WorkerChild:
    """A stub worker on cuda:0 of its own simulated host (a hostname of its own if possible)."""
    if CAN_UNSHARE:
        return spawn_worker("cuda:0", prefix=on_host(host), GPUQUEUE_STUB_DELAY="0.1")
    return spawn_worker("cuda:0", args=("--host-id", host), GPUQUEUE_STUB_DELAY="0.1")


async def _post(session: aiohttp.ClientSession, url: str, token: str, body: object) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status in (201, 202), await response.text()
        return await response.json()


async def test_every_client_on_either_web_process_sees_every_event_of_its_conversations(
    pool: db.Pool, webs: list[WebChild], spawn_worker: SpawnWorker
) -> None:
    """Two users with two conversations each; each conversation is followed by one socket on
    each web process; the jobs are submitted through both web processes in turn and run on
    both hosts. Every socket is sent exactly the conversation's transitions that job_events
    holds, in seq order, none missing and none repeated."""
    workers = [_worker_on(spawn_worker, host) for host in HOSTS]
    await asyncio.gather(*(w.ready() for w in webs), *(w.registered(pool) for w in workers))
    user_tokens = {name: await tokens.create_token(pool, name) for name in ("alice", "bob")}
    web_turns = itertools.cycle(webs)
    async with aiohttp.ClientSession() as session:
        owners: dict[str, str] = {}  # conversation id -> its user's token
        for token in user_tokens.values():
            for _ in range(2):
                base = next(web_turns).base_url
                made = await _post(session, f"{base}/api/conversations", token, {})
                owners[str(made["id"])] = token
        subscribers = [Subscriber(c, web.base_url) for c in owners for web in webs]
        following = [
            asyncio.create_task(s.follow(session, owners[s.conversation_id])) for s in subscribers
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in subscribers)), 15)
            submissions = [
                _post(
                    session,
                    f"{next(web_turns).base_url}/api/conversations/{conversation}/images",
                    token,
                    {"prompt": f"job {i}", "width": 64, "height": 64, "steps": 2},
                )
                for conversation, token in owners.items()
                for i in range(JOBS_PER_CONVERSATION)
            ]
            job_ids = [str(job["job_id"]) for job in await asyncio.gather(*submissions)]
            await wait_all_final(pool, job_ids, within=30)
            stored = {c: await _transitions(pool, c) for c in owners}
            for conversation, events in stored.items():  # queued, processing, complete
                assert len(events) == 3 * JOBS_PER_CONVERSATION, (conversation, events)
            for subscriber in subscribers:
                expected = stored[subscriber.conversation_id]
                jobs = {job for _, job, _ in expected}

                async def caught_up(s: Subscriber = subscriber, jobs: set[str] = jobs) -> bool:
                    return s.finished_jobs() == jobs

                await eventually(caught_up, within=10, what=f"{subscriber.base_url}: every end")
                assert subscriber.transitions() == expected, subscriber.base_url
        finally:
            for task in following:
                task.cancel()
            for task in following:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    hosts = await fetch_all(pool, "hosts_that_ran", {"ids": job_ids})
    assert {row["host"] for row in hosts} == set(HOSTS)


async def _transitions(pool: db.Pool, conversation_id: str) -> list[tuple[int, str, str]]:
    rows = await fetch_all(pool, "conversation_transitions", {"conversation_id": conversation_id})
    return [(int(r["seq"]), str(r["job_id"]), str(r["status"])) for r in rows]
