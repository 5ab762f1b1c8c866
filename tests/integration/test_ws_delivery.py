"""The broadcaster loses nothing (issue 4, item 5): replay with since_seq across a disconnect in a
busy queue, the LISTEN connection killed, slow clients, several web processes, shutdown."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from harness.waiting import eventually
from queueing import db, jobs
from queueing.jobs import JobRequest
from tests.integration.web_support import (
    PARAMS,
    Frame,
    HandWorker,
    User,
    events_only,
    frames_until,
    make_user,
    new_conversation,
    next_frame,
    quiet,
    running_app,
    stored_events,
    subscribe,
    web_settings,
)
from web.keys import BROADCASTER, CLIENTS, WebOptions

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def alice(pool: db.Pool) -> User:
    return await make_user(pool, "alice")


async def add_jobs(pool: db.Pool, user: User, conversation_id: str, count: int) -> list[str]:
    """Enqueue straight through the queue (no HTTP): the quickest way to make many events."""
    made = []
    for i in range(count):
        job = await jobs.enqueue(
            pool,
            conversation_id,
            JobRequest(f"job {i}", PARAMS),
            actor=user.actor,
            max_queued=1_000_000,
        )
        made.append(str(job["job_id"]))
    return made


async def read_events_until(
    ws: aiohttp.ClientWebSocketResponse, received: list[Frame], last_seq: int, wait_s: float = 20
) -> None:
    deadline = time.monotonic() + wait_s
    while not received or received[-1]["seq"] < last_seq:
        frame = await next_frame(ws, max(0.1, deadline - time.monotonic()))
        if "seq" in frame:
            received.append(frame)


async def test_replay_after_a_disconnect_in_a_busy_queue_loses_and_repeats_nothing(
    database_url: str, pool: db.Pool, alice: User
) -> None:
    """R8 recovery path: a client that drops while jobs are queued and finishing, and comes
    back with since_seq, ends with exactly the stored events: none missing, none twice."""
    async with running_app(database_url) as client:
        conversation_id = await new_conversation(client, alice)
        worker = await HandWorker(database_url).start()
        half_done = asyncio.Event()

        async def churn() -> None:
            for i in range(80):
                await add_jobs(pool, alice, conversation_id, 1)
                if i % 2:
                    await worker.complete(await worker.claim())
                if i == 40:
                    half_done.set()
            for _ in range(40):
                await worker.complete(await worker.claim())

        busy = asyncio.create_task(churn())
        try:
            ws = await client.ws_connect("/ws", params={"token": alice.token})
            received = events_only(
                await subscribe(ws, conversation_id=conversation_id, since_seq=0)
            )
            await half_done.wait()
            while len(received) < 60:
                frame = await next_frame(ws)
                if "seq" in frame:
                    received.append(frame)
            await ws.close()  # dropped in the middle of the churn

            ws = await client.ws_connect("/ws", params={"token": alice.token})
            replayed = await subscribe(
                ws, conversation_id=conversation_id, since_seq=received[-1]["seq"]
            )
            received += events_only(replayed)
            await busy
        finally:
            busy.cancel()
            await worker.close()
        expected = await stored_events(pool, conversation_id)
        await read_events_until(ws, received, expected[-1])
        assert [f["seq"] for f in received] == expected
        assert events_only(await quiet(ws)) == []
        assert len(expected) == 80 * 3  # queued, processing, complete for each job


async def test_replay_sends_current_positions_after_the_stored_events(
    database_url: str, pool: db.Pool, alice: User
) -> None:
    """Contract: with since_seq, every stored event after it first, then the current
    positions (one position message per queued job of the subscription)."""
    async with running_app(database_url) as client:
        conversation_id = await new_conversation(client, alice)
        made = await add_jobs(pool, alice, conversation_id, 3)
        ws = await client.ws_connect("/ws", params={"token": alice.token})
        frames = await subscribe(ws, conversation_id=conversation_id, since_seq=0)
        assert [f["type"] for f in frames] == ["queued"] * 3 + ["position"] * 3
        assert [f["job_id"] for f in frames[:3]] == made
        positions = {f["job_id"]: f["queue_position"] for f in frames[3:]}
        assert positions == {made[0]: 1, made[1]: 2, made[2]: 3}


async def test_the_listen_connection_killed_loses_no_event(
    database_url: str, pool: db.Pool, alice: User
) -> None:
    """Issue 4: when the LISTEN connection dies (pg_terminate_backend), the broadcaster
    reconnects, listens again and catches up from its last seq. Polling is turned off here
    (30 s), so only the catch-up can deliver what was committed meanwhile."""
    async with running_app(database_url, settings=web_settings(poll_interval_s=30.0)) as client:
        broadcaster = client.app[BROADCASTER]
        conversation_id = await new_conversation(client, alice)
        ws = await client.ws_connect("/ws", params={"token": alice.token})
        await subscribe(ws, conversation_id=conversation_id)
        old_pid = broadcaster.listener.backend_pid
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        made = await add_jobs(pool, alice, conversation_id, 20)  # while it reconnects

        frames = await frames_until(
            ws, lambda f: f.get("type") == "queued" and f["job_id"] == made[-1]
        )
        assert [f["job_id"] for f in events_only(frames)] == made
        assert broadcaster.listener.reconnects >= 1
        assert broadcaster.listener.backend_pid != old_pid
        more = await add_jobs(pool, alice, conversation_id, 1)  # and it listens again
        assert (await frames_until(ws, lambda f: f.get("type") == "queued"))[-1]["job_id"] == (
            more[0]
        )


async def _raw_subscriber(host: str, port: int, token: str, conversation_id: str) -> socket.socket:
    """A client that subscribes and then never reads: a tiny receive buffer, no reader task."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 1)
    assert response.startswith(b"HTTP/1.1 101"), response
    payload = f'{{"op": "subscribe", "conversation_id": "{conversation_id}"}}'.encode()
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask
    frame += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    await loop.sock_sendall(sock, frame)
    return sock


async def test_a_client_that_never_reads_delays_no_one_and_is_dropped(
    database_url: str, pool: db.Pool, alice: User
) -> None:
    """Issue 4: a slow client never delays the others; when its outbox overflows it is closed
    (4008) and would catch up with since_seq."""
    options = WebOptions(outbox_size=20)
    async with running_app(database_url, options=options) as client:
        conversation_id = await new_conversation(client, alice)
        server = client.server
        slow = await _raw_subscriber(
            str(server.host), int(server.port or 0), alice.token, conversation_id
        )
        try:
            fast = await client.ws_connect("/ws", params={"token": alice.token})
            await subscribe(fast, conversation_id=conversation_id)
            await eventually(
                lambda: _async(all(c.subscription is not None for c in client.app[CLIENTS]))
            )
            # The network to the slow one is slow too: a small kernel send buffer on our side.
            for c in client.app[CLIENTS]:
                sock = c.transport.get_extra_info("socket") if c.transport else None
                if sock is not None and sock.getpeername()[1] == slow.getsockname()[1]:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                    assert isinstance(c.transport, asyncio.WriteTransport)
                    c.transport.set_write_buffer_limits(high=4096)

            stats = client.app[BROADCASTER].stats
            received: list[Frame] = []
            made: list[str] = []
            while stats.clients_dropped == 0:
                assert len(made) < 2_000, "the slow client was never dropped"
                made += await add_jobs(pool, alice, conversation_id, 50)
                started = time.monotonic()
                last = made[-1]
                frames = await frames_until(
                    fast, lambda f, last=last: f.get("type") == "queued" and f["job_id"] == last
                )
                assert time.monotonic() - started < 5.0
                received += events_only(frames)
            assert [f["job_id"] for f in received] == made  # the fast one missed nothing
            assert stats.clients_dropped == 1
            await _closed_by_server(slow)
        finally:
            slow.close()


async def _closed_by_server(sock: socket.socket) -> None:
    """Read what the server had sent until the connection ends (EOF or reset)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        try:
            while await loop.sock_recv(sock, 65536):
                pass
        except ConnectionResetError:
            pass


async def _async(value: bool) -> bool:
    return value


async def test_several_web_processes_send_the_same_events(
    database_url: str, pool: db.Pool, alice: User
) -> None:
    """Issue 4: web processes behind a load balancer each fan out, and agree (seq is global)."""
    async with running_app(database_url) as one, running_app(database_url) as two:
        conversation_id = await new_conversation(one, alice)
        sockets = []
        for client in (one, two):
            ws = await client.ws_connect("/ws", params={"token": alice.token})
            await subscribe(ws, conversation_id=conversation_id)
            sockets.append(ws)
        worker = await HandWorker(database_url).start()
        try:
            await add_jobs(pool, alice, conversation_id, 5)
            for _ in range(5):
                await worker.complete(await worker.claim())
        finally:
            await worker.close()
        expected = await stored_events(pool, conversation_id)
        seen = []
        for ws in sockets:
            received: list[Frame] = []
            await read_events_until(ws, received, expected[-1])
            seen.append(received)
        assert seen[0] == seen[1]
        assert [f["seq"] for f in seen[0]] == expected


async def test_every_subscriber_of_a_conversation_gets_each_event(
    database_url: str, pool: db.Pool, alice: User
) -> None:
    """Fan-out: many sockets on one conversation each get the event (same text for all)."""
    async with running_app(database_url) as client:
        conversation_id = await new_conversation(client, alice)
        sockets = [
            await client.ws_connect("/ws", params={"token": alice.token}) for _ in range(100)
        ]
        for ws in sockets:
            await subscribe(ws, conversation_id=conversation_id)
        [job_id] = await add_jobs(pool, alice, conversation_id, 1)
        frames = await asyncio.gather(*(next_frame(ws) for ws in sockets))
        assert {f["job_id"] for f in frames} == {job_id}
        assert len({f["seq"] for f in frames}) == 1


async def test_shutdown_closes_sockets_with_going_away(database_url: str, alice: User) -> None:
    """Sockets are closed with 1001 (GOING_AWAY) when the server stops, so pages reconnect."""
    async with running_app(database_url) as client:
        ws = await client.ws_connect("/ws", params={"token": alice.token})
        await ws.send_json({"op": "ping"})
        assert (await next_frame(ws))["type"] == "pong"
        await client.server.close()
        closing = await ws.receive(timeout=5)
        assert closing.type is WSMsgType.CLOSE
        assert closing.data == aiohttp.WSCloseCode.GOING_AWAY
