"""The WebSocket's messages (R8.1-R8.5, R4.1-R4.5) in the contract's exact shapes, its protocol
errors, and isolation between users."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from harness.waiting import eventually
from queueing import db, events, tokens
from tests.integration.web_support import (
    Frame,
    HandWorker,
    User,
    database_gone,
    enqueue,
    events_only,
    frames_until,
    make_user,
    new_conversation,
    next_frame,
    quiet,
    running_app,
    subscribe,
)
from web.keys import BROADCASTER
from web.live.placing import PLACED_TIMEOUT_S

Client = TestClient[web.Request, web.Application]
EVENT_KEYS = {
    "type",
    "seq",
    "job_id",
    "message_id",
    "conversation_id",
    "model",
    "status",
    "queue_position",
    "at",
}


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    async with running_app(database_url) as c:
        yield c


@pytest.fixture
async def alice(pool: db.Pool) -> User:
    return await make_user(pool, "alice")


async def connect(client: Client, user: User) -> aiohttp.ClientWebSocketResponse:
    return await client.ws_connect("/ws", params={"token": user.token})


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> Frame:
    """The next frame of one type (position updates may come between transitions)."""
    return (await frames_until(ws, lambda f: f["type"] == kind))[-1]


async def test_every_transition_is_a_message_with_the_current_position(
    client: Client, alice: User, worker: HandWorker
) -> None:
    """R8.1-R8.5: queued, processing, complete, error and canceled messages, each with the job's
    queue position, in the contract's shape; progress while it runs; seq rises strictly."""
    conversation_id = await new_conversation(client, alice)
    ws = await connect(client, alice)
    assert await subscribe(ws, conversation_id=conversation_id) == []

    job = await enqueue(client, alice, conversation_id)
    queued = await next_of(ws, "queued")
    assert set(queued) == EVENT_KEYS
    assert queued == {
        **queued,
        "job_id": job["job_id"],
        "message_id": job["message_id"],
        "conversation_id": conversation_id,
        "status": "queued",
        "queue_position": 1,
    }
    assert queued["at"].endswith("+00:00")

    claim = await worker.claim()
    processing = await next_of(ws, "processing")
    assert set(processing) == EVENT_KEYS
    assert (processing["status"], processing["queue_position"]) == ("processing", 0)

    await worker.progress(claim, 3, 10)
    progress = await next_of(ws, "progress")
    assert progress == {"type": "progress", "job_id": job["job_id"], "step": 3, "steps": 10}

    await worker.complete(claim)
    complete = await next_of(ws, "complete")
    assert set(complete) == EVENT_KEYS | {"image_url"}
    assert complete["image_url"].startswith(f"/api/jobs/{job['job_id']}/image?exp=")
    assert complete["queue_position"] == 0

    failing = await enqueue(client, alice, conversation_id, prompt="doomed")
    await next_of(ws, "queued")
    claim = await worker.claim()
    await next_of(ws, "processing")
    await worker.fail(claim, "CUDA out of memory", retryable=False)
    error = await next_of(ws, "error")
    assert set(error) == EVENT_KEYS | {"error"}
    assert (error["job_id"], error["error"], error["queue_position"]) == (
        failing["job_id"],
        "CUDA out of memory",
        0,
    )

    doomed = await enqueue(client, alice, conversation_id)
    await next_of(ws, "queued")
    response = await client.post(f"/api/jobs/{doomed['job_id']}/cancel", headers=alice.headers)
    assert response.status == 200
    canceled = await next_of(ws, "canceled")
    assert set(canceled) == EVENT_KEYS
    assert (canceled["job_id"], canceled["queue_position"]) == (doomed["job_id"], 0)

    seqs = [e["seq"] for e in (queued, processing, complete, error, canceled)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    await ws.close()


async def test_a_retry_is_a_queued_message_with_the_error_and_its_new_position(
    client: Client, alice: User, worker: HandWorker
) -> None:
    """R6.5 and R8.5: a retried job goes back to queued, at its place, with the error."""
    conversation_id = await new_conversation(client, alice)
    ws = await connect(client, alice)
    await subscribe(ws, conversation_id=conversation_id)
    job = await enqueue(client, alice, conversation_id)
    await enqueue(client, alice, conversation_id)
    claim = await worker.claim()
    assert await worker.fail(claim, "flaky", retryable=True) == "queued"
    retried = [
        f
        for f in await frames_until(
            ws, lambda f: f["type"] == "queued" and f["job_id"] == job["job_id"] and "error" in f
        )
    ]
    again = retried[-1]
    assert (again["queue_position"], again["error"]) == (1, "flaky")


class View:
    """What a page shows: each job's status and queue position, from the messages alone."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.position: dict[str, int] = {}

    def apply(self, frame: Frame) -> None:
        if "seq" in frame:
            self.status[frame["job_id"]] = frame["status"]
            self.position[frame["job_id"]] = frame["queue_position"]
        elif frame["type"] == "position":
            self.position[frame["job_id"]] = frame["queue_position"]

    def queued(self) -> dict[str, int]:
        return {j: self.position[j] for j, s in self.status.items() if s == "queued"}


async def _converge(
    ws: aiohttp.ClientWebSocketResponse, view: View, client: Client, user: User, cid: str
) -> dict[str, int]:
    """Read frames until the view matches the database's positions; return them."""
    response = await client.get(f"/api/conversations/{cid}/jobs", headers=user.headers)
    jobs = (await response.json())["jobs"]
    statuses = {j["job_id"]: j["status"] for j in jobs}
    truth = {j["job_id"]: j["queue_position"] for j in jobs if j["status"] == "queued"}

    def matches(frame: Frame | None = None) -> bool:
        if frame is not None:
            view.apply(frame)
        return view.queued() == truth and view.status == statuses

    if not matches():
        await frames_until(ws, matches)
    assert sorted(truth.values()) == list(range(1, len(truth) + 1))  # R4.5: a permutation
    return truth


async def test_positions_follow_the_queue_over_the_websocket(
    client: Client, alice: User, pool: db.Pool, worker: HandWorker
) -> None:
    """R4.1, R4.2, R4.5: a new job ahead and every start move the others' positions; the page's
    view, built from messages alone, always equals the database's and is a permutation."""
    conversation_id = await new_conversation(client, alice)
    jobs = [await enqueue(client, alice, conversation_id, prompt=f"p{i}") for i in range(3)]
    ws = await connect(client, alice)
    view = View()
    initial = await subscribe(ws, conversation_id=conversation_id)
    # Without since_seq: no replay, but the current positions at once.
    assert {(f["type"], f["job_id"], f["queue_position"]) for f in initial} == {
        ("position", j["job_id"], i + 1) for i, j in enumerate(jobs)
    }
    assert all(set(f) == {"type", "job_id", "queue_position", "eta_s"} for f in initial)
    for job in jobs:
        view.status[job["job_id"]] = "queued"
    for frame in initial:
        view.apply(frame)

    admin = await make_user(pool, "root", admin=True)
    urgent = await enqueue(client, admin, conversation_id, priority=5)  # R4.2
    assert await _converge(ws, view, client, alice, conversation_id) == {
        urgent["job_id"]: 1,
        jobs[0]["job_id"]: 2,
        jobs[1]["job_id"]: 3,
        jobs[2]["job_id"]: 4,
    }
    for _ in range(4):  # R4.1: each start and completion moves the rest up
        claim = await worker.claim()
        await _converge(ws, view, client, alice, conversation_id)
        await worker.complete(claim)
        await _converge(ws, view, client, alice, conversation_id)
    assert view.queued() == {}
    assert set(view.status.values()) == {"complete"}


async def test_a_position_message_goes_only_where_a_position_changed(
    client: Client, alice: User, pool: db.Pool, worker: HandWorker
) -> None:
    """R4.2: a job queued behind everyone moves no one: no position message, not even a
    positions read (the fan-out knows from the event's position that nobody followed is behind)."""
    conversation_id = await new_conversation(client, alice)
    await enqueue(client, alice, conversation_id)
    broadcaster = client.app[BROADCASTER]
    listed = await (
        await client.get(f"/api/conversations/{conversation_id}/jobs", headers=alice.headers)
    ).json()

    async def first_routed() -> bool:  # else its late fan-out could count as this test's pass
        return broadcaster.routed_seq >= listed["seq"]

    await eventually(first_routed)
    ws = await connect(client, alice)
    await subscribe(ws, conversation_id=conversation_id)
    stats = broadcaster.stats
    passes = stats.position_passes
    behind = await enqueue(client, alice, conversation_id)
    assert (await next_of(ws, "queued"))["job_id"] == behind["job_id"]
    assert [f for f in await quiet(ws) if f["type"] == "position"] == []
    assert stats.position_passes == passes


async def subscribed(ws: aiohttp.ClientWebSocketResponse, **fields: Any) -> Frame:
    """Subscribe; the "subscribed" acknowledgement itself."""
    await ws.send_json({"op": "subscribe", **fields})
    return (await frames_until(ws, lambda f: f["type"] == "subscribed"))[-1]


async def test_the_snapshot_and_subscribed_frames_carry_the_seq_they_reflect(
    client: Client, alice: User, worker: HandWorker
) -> None:
    """Issue 11, the page's catch-up by seq alone: the jobs list's `seq` is the newest event it
    includes, and "subscribed" says up to which seq the subscription has been sent, so since_seq
    from either brings exactly the events after it."""
    conversation_id = await new_conversation(client, alice)
    ws = await connect(client, alice)
    await subscribe(ws, conversation_id=conversation_id)
    for _ in range(2):
        await enqueue(client, alice, conversation_id)
    last_queued = (
        await frames_until(ws, lambda f: f["type"] == "queued" and f["queue_position"] == 2)
    )[-1]
    response = await client.get(f"/api/conversations/{conversation_id}/jobs", headers=alice.headers)
    listed = await response.json()
    assert listed["seq"] == last_queued["seq"]
    assert [j["status"] for j in listed["jobs"]] == ["queued", "queued"]

    live = await connect(client, alice)
    assert (await subscribed(live, conversation_id=conversation_id))["seq"] == listed["seq"]
    await worker.claim()
    processing = await next_of(ws, "processing")
    assert processing["seq"] > listed["seq"]

    again = await connect(client, alice)
    await again.send_json(
        {"op": "subscribe", "conversation_id": conversation_id, "since_seq": listed["seq"]}
    )
    frames = await frames_until(again, lambda f: f["type"] == "subscribed")
    assert [f["seq"] for f in events_only(frames[:-1])] == [processing["seq"]]
    assert frames[-1]["seq"] == processing["seq"]


async def test_a_client_ahead_of_this_processs_fan_out_never_gets_positions_from_behind(
    client: Client, alice: User, pool: db.Pool, worker: HandWorker
) -> None:
    """A client that saw newer events on another web process resubscribes here with that
    since_seq while this process's fan-out has not followed them (its LISTEN connection was cut,
    say): the positions its older queue order gives would be older than what the client knows
    (the chaos run, seed 3417672460, a finished job shown at position 1 again). The subscribe
    waits for the fan-out to catch up; one that does not within PLACED_TIMEOUT_S is closed with
    1013 (try again later) and gets no position."""
    conversation_id = await new_conversation(client, alice)
    first = await enqueue(client, alice, conversation_id)
    second = await enqueue(client, alice, conversation_id)
    broadcaster = client.app[BROADCASTER]
    await broadcaster.stop()  # this process stops following the log ...
    assert str((await worker.claim()).job_id) == first["job_id"]  # ... and the queue moves on
    since = await events.last_seq(pool)
    ws = await connect(client, alice)
    await ws.send_json({"op": "subscribe", "conversation_id": conversation_id, "since_seq": since})
    closing = await ws.receive(timeout=PLACED_TIMEOUT_S + 5)  # the first frame: nothing before it
    assert (closing.type, ws.close_code) == (WSMsgType.CLOSE, 1013), closing
    await broadcaster.start()  # following again, from the order as it is now
    ws = await connect(client, alice)
    positions = await subscribe(ws, conversation_id=conversation_id, since_seq=since)
    assert [(f["type"], f["job_id"], f["queue_position"]) for f in positions] == [
        ("position", second["job_id"], 1)
    ]


async def test_a_frame_the_database_cannot_answer_closes_the_socket_so_the_client_comes_back(
    client: Client, alice: User, pg_admin_url: str, database_url: str
) -> None:
    """A subscribe that finds the database gone drops the subscription, so the socket is closed
    with 1013 (try again later): the client reconnects and resubscribes with since_seq, missing
    nothing. An error frame on a socket left open left the page unsubscribed, and showing "Live"
    (it takes a socket as live after 3 s)."""
    conversation_id = await new_conversation(client, alice)
    ws = await connect(client, alice)
    with database_gone(pg_admin_url, database_url):
        await ws.send_json({"op": "subscribe", "conversation_id": conversation_id})
        closing = await ws.receive(timeout=10)  # the first frame: nothing before it
        assert (closing.type, ws.close_code) == (WSMsgType.CLOSE, 1013), closing


async def test_a_job_ids_subscription_gets_only_those_jobs(
    client: Client, alice: User, worker: HandWorker
) -> None:
    """WebSocket: {"op": "subscribe", "job_ids": [...]} follows those jobs only."""
    conversation_id = await new_conversation(client, alice)
    first = await enqueue(client, alice, conversation_id)
    second = await enqueue(client, alice, conversation_id)
    ws = await connect(client, alice)
    initial = await subscribe(ws, job_ids=[second["job_id"]])
    assert initial == [
        {"type": "position", "job_id": second["job_id"], "queue_position": 2, "eta_s": None}
    ]
    claim = await worker.claim()  # `first` starts: `second` moves to 1
    moved = await next_of(ws, "position")
    assert (moved["job_id"], moved["queue_position"]) == (second["job_id"], 1)
    await worker.complete(claim)
    claim = await worker.claim()
    processing = await next_of(ws, "processing")
    assert processing["job_id"] == second["job_id"]
    assert all(f.get("job_id") != first["job_id"] for f in await quiet(ws))


async def test_another_users_conversation_or_job_is_refused_and_nothing_is_sent(
    client: Client, alice: User, pool: db.Pool
) -> None:
    """Isolation on the WebSocket: subscribing to another user's conversation or jobs is an
    error frame, and none of their events reach the socket."""
    bob = await make_user(pool, "bob")
    conversation_id = await new_conversation(client, alice)
    job = await enqueue(client, alice, conversation_id)
    watcher = await connect(client, alice)
    await subscribe(watcher, conversation_id=conversation_id)

    intruder = await connect(client, bob)
    for request in (
        {"conversation_id": conversation_id},
        {"job_ids": [job["job_id"]]},
        {"conversation_id": conversation_id, "since_seq": 0},
    ):
        await intruder.send_json({"op": "subscribe", **request})
        refused = await next_frame(intruder)
        assert refused["type"] == "error" and refused["error"]["code"] == "not_found"
        assert set(refused) == {"type", "error"} and set(refused["error"]) == {"code", "message"}

    await enqueue(client, alice, conversation_id)
    await next_of(watcher, "queued")  # alice saw it: it was routed to every subscriber
    assert await quiet(intruder) == []


BAD_FRAMES = [
    ("not json", "bad_frame"),
    ("[1, 2]", "bad_frame"),
    ('{"op": "dance"}', "unknown_op"),
    ('{"no": "op"}', "unknown_op"),
    ('{"op": "subscribe"}', "invalid"),
    ('{"op": "subscribe", "conversation_id": 5}', "invalid"),
    ('{"op": "subscribe", "conversation_id": "nope"}', "not_found"),
    ('{"op": "subscribe", "job_ids": []}', "invalid"),
    ('{"op": "subscribe", "job_ids": "abc"}', "invalid"),
    ('{"op": "subscribe", "job_ids": ["00000000-0000-0000-0000-000000000000"]}', "not_found"),
    ('{"op": "subscribe", "conversation_id": "C", "since_seq": -1}', "invalid"),
    ('{"op": "subscribe", "conversation_id": "C", "since_seq": true}', "invalid"),
    ('{"op": "subscribe", "conversation_id": "C", "job_ids": ["C"]}', "invalid"),
    ('{"op": "subscribe", "conversation_id": "C", "colour": 1}', "unknown_fields"),
]


async def test_bad_frames_get_an_error_frame_and_the_socket_stays_usable(
    client: Client, alice: User
) -> None:
    """WebSocket: each bad frame is answered with an error frame naming what was wrong, and the
    socket keeps working (a subscribe after them all succeeds)."""
    conversation_id = await new_conversation(client, alice)
    ws = await connect(client, alice)
    for frame, code in BAD_FRAMES:
        await ws.send_str(frame.replace('"C"', f'"{conversation_id}"'))
        error = await next_frame(ws)
        assert error["type"] == "error" and error["error"]["code"] == code, (frame, error)
    assert await quiet(ws) == []
    await subscribe(ws, conversation_id=conversation_id)


async def test_binary_and_oversized_frames(client: Client, alice: User) -> None:
    """WebSocket: a binary frame is an error frame; a frame over 64 KiB closes with 1009."""
    ws = await connect(client, alice)
    await ws.send_bytes(b'{"op": "ping"}')
    assert (await next_frame(ws))["error"]["code"] == "bad_frame"
    assert await quiet(ws) == []
    await ws.send_str('{"op": "ping", "pad": "' + "x" * 70_000 + '"}')
    closing = await ws.receive(timeout=5)
    assert closing.type is WSMsgType.CLOSE
    assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_the_websocket_needs_a_valid_token(client: Client, alice: User) -> None:
    """Tokens: /ws without a valid token is refused before the upgrade (401); the header works
    as well as ?token=."""
    for params in ({}, {"token": "gq_wrong"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws", params=params)
        assert refused.value.status == 401
    ws = await client.ws_connect("/ws", headers=alice.headers)
    await ws.send_json({"op": "ping"})
    assert (await next_frame(ws))["type"] == "pong"
    plain = await client.get("/ws", params={"token": alice.token})  # no upgrade asked
    assert plain.status == 400
    assert (await plain.json())["error"]["code"] == "bad_request"


async def test_a_revoked_token_is_refused_at_the_next_message(
    client: Client, alice: User, pool: db.Pool
) -> None:
    """Tokens: revocation reaches open sockets: the next client frame gets an error frame and
    the socket closes with 4401."""
    conversation_id = await new_conversation(client, alice)
    ws = await connect(client, alice)
    await subscribe(ws, conversation_id=conversation_id)
    await tokens.revoke_token(pool, alice.token)
    await ws.send_json({"op": "ping"})
    refused = await next_frame(ws)
    assert refused["type"] == "error" and refused["error"]["code"] == "unauthorized"
    closing = await ws.receive(timeout=5)
    assert closing.type is WSMsgType.CLOSE and closing.data == 4401


async def test_unsubscribe_stops_the_feed(client: Client, alice: User) -> None:
    """WebSocket: after {"op": "unsubscribe"} nothing more arrives for that subscription."""
    conversation_id = await new_conversation(client, alice)
    ws = await connect(client, alice)
    await subscribe(ws, conversation_id=conversation_id)
    other = await connect(client, alice)
    await subscribe(other, conversation_id=conversation_id)
    await ws.send_json({"op": "unsubscribe"})
    assert (await next_frame(ws)) == {"type": "unsubscribed"}
    await enqueue(client, alice, conversation_id)
    await next_of(other, "queued")  # routed to every subscriber by now
    assert events_only(await quiet(ws)) == []


async def test_subscribing_again_replaces_the_subscription(client: Client, alice: User) -> None:
    """WebSocket: a socket follows one subscription; a new subscribe switches it."""
    first = await new_conversation(client, alice, "first")
    second = await new_conversation(client, alice, "second")
    ws = await connect(client, alice)
    await subscribe(ws, conversation_id=first)
    await subscribe(ws, conversation_id=second)
    await enqueue(client, alice, first)
    job = await enqueue(client, alice, second)
    frames: list[Any] = await frames_until(ws, lambda f: f["type"] == "queued")
    assert frames[-1]["job_id"] == job["job_id"]
