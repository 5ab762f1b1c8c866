"""Hostile input (issue 7, item 3): whatever arrives, the answer is a 4xx error in the contract's
shape or a valid result, never a 500 and never a dropped server, and a refused request leaves the
database exactly as it was (every table's row count and an md5 of its rows).

Property-based (hypothesis), against the in-process app on a real database: random JSON shapes,
types, sizes and unicode, raw bytes a JSON encoder would never write (NUL, lone surrogates,
invalid UTF-8, NaN/Infinity, numbers past every limit), malformed ids and paths, and on the
WebSocket: frames that are not JSON, binary frames, huge frames and subscribe storms. Then
SQL-injection strings in every text field, which must be stored verbatim and do nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from harness.waiting import eventually
from queueing import db
from tests.integration.web_support import (
    User,
    enqueue,
    frames_until,
    make_user,
    new_conversation,
    next_frame,
    running_app,
    web_settings,
)
from tests.reliability.hostile import (
    INJECTIONS,
    encode,
    fingerprint,
    id_kind,
    id_routes,
    json_values,
    judge,
    mutated_ids,
    near_requests,
    raw_bodies,
)
from web.keys import CLIENTS

Client = TestClient[web.Request, web.Application]
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=False, database=None,
)  # fmt: skip


@dataclass
class World:
    """Alice's things (a conversation, a queued job and its message) and Bob, on one server."""

    client: Client
    pool: db.Pool
    alice: User
    bob: User
    conversation_id: str
    job_id: str
    message_id: str
    bob_conversation_id: str

    def ids(self, kind: str) -> str:
        return {"conversation": self.conversation_id, "job": self.job_id,
                "message": self.message_id}[kind]  # fmt: skip


@pytest.fixture(scope="module")
async def world(module_database_url: str, module_pool: db.Pool) -> AsyncIterator[World]:
    settings_ = web_settings(max_queued_per_user=1_000_000)
    async with running_app(module_database_url, settings=settings_) as client:
        alice = await make_user(module_pool, "hostile-alice")
        bob = await make_user(module_pool, "hostile-bob")
        conversation_id = await new_conversation(client, alice)
        job = await enqueue(client, alice, conversation_id)
        yield World(client, module_pool, alice, bob, conversation_id, job["job_id"],
                    job["message_id"], await new_conversation(client, bob))  # fmt: skip


async def send(
    world: World,
    method: str,
    path: str | URL,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    as_user: User | None = None,
) -> tuple[int, Any]:
    """One request, judged; a refused one must have changed nothing in the database."""
    before = await fingerprint(world.pool)
    user = as_user or world.alice
    all_headers = {**user.headers, "Content-Type": "application/json", **(headers or {})}
    response = await world.client.request(method, path, data=body, headers=all_headers)
    answer = await judge(response, f"{method} {str(path)[:200]} {body[:200] if body else ''!r}")
    if answer.status >= 400:
        after = await fingerprint(world.pool)
        changed = {t: (before[t], after.get(t)) for t in before if before[t] != after.get(t)}
        assert not changed, f"{method} {path} was refused ({answer.status}) but wrote {changed}"
    return answer.status, answer.body


async def assert_server_alive(world: World) -> None:
    response = await world.client.get("/healthz")
    assert response.status == 200, await response.text()


# -- HTTP: bodies -----------------------------------------------------------------------------

WRITES = [
    ("POST", "/api/conversations"),
    ("POST", "/api/conversations/{conversation}/images"),
    ("PATCH", "/api/messages/{message}/metadata"),
    ("POST", "/api/jobs/{job}/cancel"),
]


def _path(world: World, template: str) -> str:
    return template.format(conversation=world.conversation_id, message=world.message_id,
                           job=world.job_id)  # fmt: skip


def _check_accepted(method: str, path: str, status: int, body: Any) -> None:
    """A request that got through answers what the contract says for it."""
    if path.endswith("/images"):
        assert status == 202 and body["status"] == "queued" and body["queue_position"] >= 1, body
    elif path == "/api/conversations":
        assert status == 201 and set(body) >= {"id", "title", "created_at"}, body
    elif path.endswith("/metadata"):
        assert status == 200 and isinstance(body["extra_metadata"], dict), body
    else:
        assert status in (200, 202) and "status" in body, body


@FUZZ
@given(target=st.sampled_from(WRITES), value=json_values)
async def test_random_json_bodies_get_a_clear_answer(
    world: World, target: tuple[str, str], value: Any
) -> None:
    """Any JSON value (NaN and Infinity literals included) as the body of every write."""
    method, template = target
    path = _path(world, template)
    status, body = await send(world, method, path, body=encode(value))
    if status < 400:
        _check_accepted(method, path, status, body)


@FUZZ
@given(target=st.sampled_from(WRITES[:3]), value=near_requests)
async def test_requests_with_known_fields_and_hostile_values(
    world: World, target: tuple[str, str], value: dict[str, Any]
) -> None:
    """Objects with the real field names and values of every type, size, sign and script."""
    method, template = target
    path = _path(world, template)
    status, body = await send(world, method, path, body=encode(value))
    if status < 400:
        _check_accepted(method, path, status, body)


@settings(FUZZ, max_examples=60)
@given(target=st.sampled_from(WRITES[:3]), raw=raw_bodies())
async def test_bodies_that_no_json_encoder_writes(
    world: World, target: tuple[str, str], raw: bytes
) -> None:
    """Raw NUL, lone surrogates (escaped and as CESU bytes), invalid UTF-8, NaN/Infinity,
    numbers past every limit, nesting 30,000 deep, truncated JSON, random bytes."""
    method, template = target
    path = _path(world, template)
    status, body = await send(world, method, path, body=raw)
    if status < 400:
        _check_accepted(method, path, status, body)


async def test_a_body_over_the_limit_is_413_and_changes_nothing(world: World) -> None:
    """A body over 64 KiB is refused as such, declared or streamed without a length."""
    big = encode({"prompt": "x" * 70_000})
    status, body = await send(world, "POST", _path(world, WRITES[1][1]), body=big)
    assert status == 413, body

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b" " * 1024

    before = await fingerprint(world.pool)
    response = await world.client.post(_path(world, WRITES[1][1]), data=chunks(),
                                       headers=world.alice.headers)  # fmt: skip
    answer = await judge(response, "chunked body")
    assert answer.status == 413, answer.text
    assert await fingerprint(world.pool) == before
    await assert_server_alive(world)


# -- HTTP: paths, ids, methods and headers ------------------------------------------------------


@settings(FUZZ, max_examples=60)
@given(data=st.data())
async def test_malformed_ids_and_paths_are_404(world: World, data: st.DataObject) -> None:
    """Every route that takes an id, with ids that are almost right or not ids at all: 404 in
    the contract's shape (an id that names nothing is not found), never a 500."""
    method, template = data.draw(st.sampled_from(id_routes(world.client.app)))
    real = uuid.UUID(world.ids(id_kind(template)))
    wrong = data.draw(mutated_ids(real))
    segment = quote(wrong.encode("utf-8", "surrogatepass"), safe="")
    path = URL(template.replace("{id}", segment), encoded=True)
    try:
        same = uuid.UUID(wrong) == real
    except ValueError:
        same = False
    if same and method == "DELETE":
        return  # the real id spelled otherwise would delete the module's world for real
    status, body = await send(world, method, path, body=encode({"prompt": "x"}))
    if same:
        return  # another spelling of the real id (urn:, braces, no dashes) may be found
    if "/" in wrong or wrong in (".", "..") or "%" in wrong:
        assert status in (404, 405), (path, status, body)
    else:
        assert status == 404, (path, status, body)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    path=st.text(max_size=80),
)
async def test_random_paths_and_methods(world: World, method: str, path: str) -> None:
    """Any path under the API with any method: 404 or 405 (or a real answer), in the shape."""
    raw = "/api/" + quote(path.encode("utf-8", "surrogatepass"), safe="/")
    await send(world, method, URL(raw, encoded=True), body=b"{}")


@FUZZ
@given(value=st.one_of(
    st.text(max_size=60).map(lambda t: "Bearer " + t),
    st.text(max_size=60),
    st.sampled_from(["Bearer", "Bearer ", "bearer gq_x", "Basic YWxpY2U6cHc=", "Token gq_",
                     "Bearer " + "a" * 5000, "Bearer gq_\u00e9", "Bearer \t gq_"]),
))  # fmt: skip
async def test_hostile_authorization_headers_are_401(world: World, value: str) -> None:
    """A header that carries no valid token is 401 with WWW-Authenticate, and writes nothing."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "surrogatepass").decode("latin-1")
    # Control characters cannot be sent at all (the client refuses header injection).
    value = "".join(c if c == "\t" or (c >= " " and c != "\x7f") else " " for c in value)
    before = await fingerprint(world.pool)
    response = await world.client.post(
        "/api/conversations", data=b'{"title": "x"}', headers={"Authorization": value}
    )
    answer = await judge(response, f"Authorization {value[:80]!r}")
    assert answer.status == 401, answer.text
    assert response.headers.get("WWW-Authenticate") == "Bearer"
    assert await fingerprint(world.pool) == before


async def test_an_oversized_request_line_or_header_is_refused_and_the_server_stays(
    world: World,
) -> None:
    """Past aiohttp's own limits (8 KiB line or header) the HTTP parser answers 4xx before any
    handler runs; the server keeps serving."""
    for path, headers in ((f"/api/jobs/{'a' * 9000}", {}), ("/healthz", {"X-Big": "b" * 9000})):
        response = await world.client.get(path, headers=headers)
        assert 400 <= response.status < 500, (path[:40], response.status)
        response.release()
    await assert_server_alive(world)


# -- WebSocket ----------------------------------------------------------------------------------


async def _socket(world: World, user: User | None = None) -> aiohttp.ClientWebSocketResponse:
    return await world.client.ws_connect("/ws", params={"token": (user or world.alice).token})


async def _answer(
    ws: aiohttp.ClientWebSocketResponse, wait_s: float = 5.0
) -> dict[str, Any] | None:
    """The next text frame as JSON, or None when the server closed the socket."""
    msg = await ws.receive(timeout=wait_s)
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        return None
    assert msg.type is WSMsgType.TEXT, (msg.type, msg.data)
    frame: dict[str, Any] = json.loads(msg.data)
    return frame


def _valid_reply(frame: dict[str, Any]) -> None:
    """What a frame may be answered with: an error in the contract's shape, or a real message."""
    kind = frame.get("type")
    if kind == "error" and "job_id" not in frame:
        assert set(frame["error"]) == {"code", "message"}, frame
        assert frame["error"]["code"] and frame["error"]["message"], frame
    else:
        assert kind in ("subscribed", "unsubscribed", "pong", "position", "queued", "processing",
                        "complete", "canceled", "error", "progress"), frame  # fmt: skip


async def _still_serving(world: World) -> None:
    ws = await _socket(world)
    await ws.send_json({"op": "ping"})
    assert (await next_frame(ws))["type"] == "pong"
    await ws.close()
    await assert_server_alive(world)


@settings(FUZZ, max_examples=50)
@given(frame=st.one_of(
    json_values.map(encode),
    near_requests.map(lambda d: encode({"op": "subscribe", **d})),
    near_requests.map(encode),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
))  # fmt: skip
async def test_random_text_frames_get_an_answer_and_the_socket_stays(
    world: World, frame: bytes
) -> None:
    """Any text frame: answered with an error frame or a real reply; never a dropped server. A
    frame that is not UTF-8 may close that socket (1007), and only that one."""
    before = await fingerprint(world.pool)
    ws = await _socket(world)
    try:
        await ws.send_frame(frame, WSMsgType.TEXT)
        reply = await _answer(ws)
        try:
            frame.decode("utf-8")
        except UnicodeDecodeError:
            assert reply is None or reply["type"] == "error", reply
            if reply is None:
                assert ws.close_code == aiohttp.WSCloseCode.INVALID_TEXT, ws.close_code
            return
        assert reply is not None, f"the server closed the socket ({ws.close_code}) for {frame!r}"
        _valid_reply(reply)
        await ws.send_json({"op": "ping"})
        while reply is not None and reply.get("type") != "pong":
            _valid_reply(reply)
            reply = await _answer(ws)
        assert reply is not None, "the socket did not stay usable"
    finally:
        await ws.close()
    assert await fingerprint(world.pool) == before
    await _still_serving(world)


async def test_binary_and_huge_frames(world: World) -> None:
    """A binary frame gets an error frame; a frame over 64 KiB closes that socket with 1009;
    the server keeps serving and nothing is written."""
    before = await fingerprint(world.pool)
    ws = await _socket(world)
    await ws.send_bytes(b"\x00\x01" * 100)
    reply = await _answer(ws)
    assert reply is not None and reply["type"] == "error", reply
    assert reply["error"]["code"] == "bad_frame"
    huge = encode({"op": "subscribe", "conversation_id": world.conversation_id,
                   "x": "y" * 70_000})  # fmt: skip
    await ws.send_frame(huge, WSMsgType.TEXT)
    assert await _answer(ws) is None
    assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert await fingerprint(world.pool) == before
    await _still_serving(world)


async def test_a_subscribe_storm_leaves_one_subscription_and_no_duplicate(world: World) -> None:
    """Hundreds of subscribe frames without waiting (own and others' conversations, job ids,
    garbage, since_seq anywhere): each is answered in order, the last one wins, and a new job's
    event then arrives exactly once; closing leaves nothing subscribed on the server."""
    ws = await _socket(world)
    frames: list[dict[str, Any]] = []
    own: dict[str, Any] = {"conversation_id": world.conversation_id}
    choices: list[dict[str, Any]] = [own, {**own, "since_seq": 0}, {**own, "since_seq": 10**12},
               {"conversation_id": world.bob_conversation_id}, {"job_ids": [world.job_id]},
               {"job_ids": [world.job_id] * 100}, {"job_ids": []},
               {"conversation_id": "'; DROP TABLE jobs; --"}, {"since_seq": -1}]  # fmt: skip
    for i in range(300):
        frames.append({"op": "subscribe", **choices[i % len(choices)]})
    frames.append({"op": "subscribe", **own})
    for f in frames:  # without waiting for any answer
        await ws.send_json(f)
    answers: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(answers) < len(frames):
        reply = await _answer(ws, max(0.1, deadline - time.monotonic()))
        assert reply is not None, f"closed after {len(answers)} answers: {ws.close_code}"
        _valid_reply(reply)
        if reply["type"] == "subscribed" or (reply["type"] == "error" and "job_id" not in reply):
            answers.append(reply)
    last = answers[-1]
    assert last["type"] == "subscribed" and last["conversation_id"] == world.conversation_id, last
    job = await enqueue(world.client, world.alice, world.conversation_id)
    got = await frames_until(ws, lambda f: f.get("job_id") == job["job_id"] and "seq" in f)
    await ws.send_json({"op": "ping"})
    rest = await frames_until(ws, lambda f: f["type"] == "pong")
    mine = [f for f in got + rest if f.get("job_id") == job["job_id"] and "seq" in f]
    assert [f["type"] for f in mine] == ["queued"], mine
    await ws.close()

    async def nothing_subscribed() -> bool:
        return all(c.closed and c.subscription is None for c in world.client.app[CLIENTS])

    await eventually(nothing_subscribed, within=5)
    await _still_serving(world)


# -- SQL injection ------------------------------------------------------------------------------


async def test_injection_strings_are_stored_verbatim_and_do_nothing(world: World) -> None:
    """Every text field (title, prompt, negative_prompt, metadata keys and values, nested)
    carries injection strings; each is stored and shown back exactly, and the database is
    otherwise untouched: same tables, no admin, no other user's rows changed."""
    async with world.pool.connection() as conn:
        cur = await conn.execute("SELECT name, is_admin FROM users ORDER BY id")
        users_before = await cur.fetchall()
        cur = await conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " ORDER BY 1"
        )
        tables_before = await cur.fetchall()
    started = time.monotonic()
    for text in INJECTIONS:
        status, conversation = await send(world, "POST", "/api/conversations",
                                          body=encode({"title": text}))  # fmt: skip
        assert status == 201 and conversation["title"] == text, conversation
        status, job = await send(
            world, "POST", f"/api/conversations/{conversation['id']}/images",
            body=encode({"prompt": text, "negative_prompt": text}),
        )  # fmt: skip
        assert status == 202, job
        assert job["prompt"] == text and job["params"]["negative_prompt"] == text, job
        patch = {text: text, "nested": {text: [text, {text: text}]}}
        status, message = await send(world, "PATCH", f"/api/messages/{job['message_id']}/metadata",
                                     body=encode(patch))  # fmt: skip
        assert status == 200, message
        for key, value in patch.items():
            assert message["extra_metadata"][key] == value, message
        status, read = await send(world, "GET", f"/api/jobs/{job['job_id']}")
        assert read["prompt"] == text and read["params"]["negative_prompt"] == text
        status, shown = await send(world, "GET", f"/api/conversations/{conversation['id']}")
        assert shown["title"] == text
        [stored] = [m for m in shown["messages"] if m["id"] == job["message_id"]]
        assert stored["extra_metadata"][text] == text
        assert stored["extra_metadata"]["nested"] == patch["nested"]
    assert time.monotonic() - started < 30  # no pg_sleep ran
    async with world.pool.connection() as conn:
        cur = await conn.execute("SELECT name, is_admin FROM users ORDER BY id")
        assert await cur.fetchall() == users_before
        cur = await conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " ORDER BY 1"
        )
        assert await cur.fetchall() == tables_before
        cur = await conn.execute(
            "SELECT count(*) AS n FROM api_tokens WHERE revoked_at IS NOT NULL"
        )
        assert (await cur.fetchone() or {})["n"] == 0
    # The injection strings in a WebSocket frame are ids that name nothing.
    ws = await _socket(world)
    for text in INJECTIONS:
        await ws.send_json({"op": "subscribe", "conversation_id": text})
        reply = await _answer(ws)
        assert reply is not None and reply["type"] == "error", reply
        assert reply["error"]["code"] == "not_found", reply
    await ws.close()
    await _still_serving(world)
