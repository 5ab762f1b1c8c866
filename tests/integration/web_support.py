"""What the web tests share: the app running on the test's own database, users with tokens, a
worker driven by hand (so jobs move without a worker process), and WebSocket frame helpers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from psycopg import sql

from gpu_worker.png import encode_rgb
from queueing import db, jobs, tokens
from queueing.actors import Actor
from queueing.config import Settings
from tests.helpers import worker_session
from web.app import create_app
from web.keys import WebOptions

PNG = encode_rgb(8, 8, [bytes(range(24))] * 8)
Frame = dict[str, Any]


# Small, valid image parameters for jobs the tests enqueue directly.
PARAMS = {
    "negative_prompt": None,
    "width": 64,
    "height": 64,
    "steps": 2,
    "guidance_scale": 7.5,
    "seed": 1,
}


@dataclass
class User:
    name: str
    token: str
    actor: Actor

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_user(pool: db.Db, name: str, *, admin: bool = False) -> User:
    token = await tokens.create_token(pool, name, admin=admin)
    actor = await tokens.authenticate(pool, token)
    assert actor is not None
    return User(name, token, actor)


def web_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"poll_interval_s": 1.0, "default_size": 512, "web_pool_size": 8}
    return Settings(**{**base, **overrides})


@asynccontextmanager
async def running_app(
    database_url: str, *, settings: Settings | None = None, options: WebOptions | None = None
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(settings or web_settings(), database_url, options)
    async with TestClient(TestServer(app)) as client:
        yield client


@contextmanager
def database_gone(pg_admin_url: str, database_url: str) -> Iterator[None]:
    """The database refuses connections and its sessions are cut, until the block ends."""
    name = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    allow = sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}")
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(allow.format(sql.Identifier(name), sql.SQL("false")))
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            yield
        finally:
            admin.execute(allow.format(sql.Identifier(name), sql.SQL("true")))


@dataclass
class HandWorker:
    """A worker the test drives: its own session holds the GPU lock, as a real worker's does."""

    url: str
    device: str = "cpu"
    worker_id: uuid.UUID = field(default_factory=uuid.uuid4)
    conn: db.Connection | None = None

    async def start(self) -> HandWorker:
        self.conn, self.worker_id = await worker_session(self.url, self.device)
        return self

    async def claim(self) -> jobs.Claim:
        assert self.conn is not None
        claim = await jobs.lock_and_claim(self.conn, self.worker_id)
        assert claim is not None, "nothing to claim"
        return claim

    async def complete(self, claim: jobs.Claim) -> None:
        assert self.conn is not None
        assert await jobs.complete(self.conn, claim, PNG, release_device=claim.gpu_lock)

    async def fail(self, claim: jobs.Claim, error: str, *, retryable: bool = False) -> str | None:
        assert self.conn is not None
        return await jobs.fail(
            self.conn,
            claim,
            error,
            retryable=retryable,
            backoff=jobs.Backoff(0.01, 0.01),
            release_device=claim.gpu_lock,
        )

    async def finish_canceled(self, claim: jobs.Claim) -> None:
        assert self.conn is not None
        assert await jobs.finish_canceled(self.conn, claim, release_device=claim.gpu_lock)

    async def progress(self, claim: jobs.Claim, step: int, steps: int) -> bool | None:
        assert self.conn is not None
        return await jobs.report_progress(self.conn, claim, step, steps)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None


async def enqueue(
    client: TestClient[web.Request, web.Application],
    user: User,
    conversation_id: str,
    **body: Any,
) -> Frame:
    response = await client.post(
        f"/api/conversations/{conversation_id}/images",
        json={"prompt": "a red fox", **body},
        headers=user.headers,
    )
    assert response.status == 202, await response.text()
    job: Frame = await response.json()
    return job


async def new_conversation(
    client: TestClient[web.Request, web.Application], user: User, title: str = "test"
) -> str:
    response = await client.post("/api/conversations", json={"title": title}, headers=user.headers)
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


# -- WebSocket frames ---------------------------------------------------------------------------


async def next_frame(ws: ClientWebSocketResponse, wait_s: float = 5.0) -> Frame:
    msg = await ws.receive(timeout=wait_s)
    assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type}: {msg.data!r}"
    frame: Frame = json.loads(msg.data)
    return frame


async def frames_until(
    ws: ClientWebSocketResponse, done: Callable[[Frame], bool], wait_s: float = 10.0
) -> list[Frame]:
    """Every frame up to and including the first one `done` accepts."""
    deadline = time.monotonic() + wait_s
    frames: list[Frame] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching frame within {wait_s} s; got {frames[-20:]}")
        frame = await next_frame(ws, remaining)
        frames.append(frame)
        if done(frame):
            return frames


async def subscribe(ws: ClientWebSocketResponse, **fields: Any) -> list[Frame]:
    """Subscribe; return what came before the "subscribed" acknowledgement (replay, positions)."""
    await ws.send_json({"op": "subscribe", **fields})
    frames = await frames_until(ws, lambda f: f["type"] in ("subscribed", "error"))
    assert frames[-1]["type"] == "subscribed", frames[-1]
    return frames[:-1]


async def quiet(ws: ClientWebSocketResponse) -> list[Frame]:
    """Frames received before a ping's pong: a round trip proves nothing else is in flight for
    frames already queued before the ping (the outbox is first in, first out)."""
    await ws.send_json({"op": "ping"})
    frames = await frames_until(ws, lambda f: f["type"] == "pong")
    return frames[:-1]


def events_only(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if "seq" in f]


async def stored_events(pool: db.Db, conversation_id: str) -> list[int]:
    """The seqs the WebSocket must deliver for a conversation (every event but 'pending')."""
    rows = await db.fetch_all(
        pool,
        "events_after",
        {
            "after": 0,
            "conversation_ids": [conversation_id],
            "job_ids": None,
            "until": None,
            "limit": 1_000_000,
        },
    )
    return [row["seq"] for row in rows]
