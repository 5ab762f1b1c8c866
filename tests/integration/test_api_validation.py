"""Validation at the edge (issue 4, item 2): every bad input is refused with the contract's error
shape and the right status, never a 500, and a refused request writes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from queueing import db
from tests.integration.web_support import (
    User,
    enqueue,
    make_user,
    new_conversation,
    running_app,
    web_settings,
)
from web.app import create_app

Client = TestClient[web.Request, web.Application]

# (field values merged into a valid body, expected status, a word the message must contain)
BAD_IMAGE_REQUESTS: list[tuple[dict[str, Any], int, str]] = [
    ({"prompt": None}, 422, "prompt"),
    ({"prompt": ""}, 422, "prompt"),
    ({"prompt": "   "}, 422, "prompt"),
    ({"prompt": "x" * 2001}, 422, "prompt"),
    ({"prompt": "a\x00b"}, 422, "NUL"),
    ({"prompt": 5}, 422, "prompt"),
    ({"prompt": ["a"]}, 422, "prompt"),
    ({"negative_prompt": "x" * 2001}, 422, "negative_prompt"),
    ({"negative_prompt": "\x00"}, 422, "negative_prompt"),
    ({"negative_prompt": 1}, 422, "negative_prompt"),
    ({"width": 63}, 422, "width"),
    ({"width": 56}, 422, "width"),
    ({"width": 2056}, 422, "width"),
    ({"width": 100}, 422, "multiple of 8"),
    ({"width": "512"}, 422, "width"),
    ({"width": True}, 422, "width"),
    ({"width": 512.0}, 422, "width"),
    ({"height": 0}, 422, "height"),
    ({"height": 4096}, 422, "height"),
    ({"height": 65}, 422, "height"),
    ({"steps": 0}, 422, "steps"),
    ({"steps": 151}, 422, "steps"),
    ({"steps": True}, 422, "steps"),
    ({"steps": 1.5}, 422, "steps"),
    ({"guidance_scale": -0.1}, 422, "guidance_scale"),
    ({"guidance_scale": 30.01}, 422, "guidance_scale"),
    ({"guidance_scale": "7"}, 422, "guidance_scale"),
    ({"guidance_scale": False}, 422, "guidance_scale"),
    ({"seed": -1}, 422, "seed"),
    ({"seed": 2**32}, 422, "seed"),
    ({"seed": True}, 422, "seed"),
    ({"seed": 1.0}, 422, "seed"),
    ({"timeout_s": 0}, 422, "timeout_s"),
    ({"timeout_s": 3601}, 422, "timeout_s"),
    ({"max_attempts": 0}, 422, "max_attempts"),
    ({"max_attempts": 11}, 422, "max_attempts"),
    ({"max_attempts": True}, 422, "max_attempts"),
    ({"priority": True}, 422, "priority"),
    ({"priority": 1}, 403, "admin"),
    ({"priority": -1001}, 422, "priority"),
    ({"colour": "red"}, 422, "colour"),
    ({"sampler": "ddim", "cfg": 3}, 422, "cfg, sampler"),
]

GOOD_EDGES: list[dict[str, Any]] = [
    {"prompt": "x" * 2000},
    {"prompt": "ünïcødé 🦊", "negative_prompt": "x" * 2000},
    {"width": 64, "height": 2048},
    {"width": 2048, "height": 64},
    {"steps": 1},
    {"steps": 150},
    {"guidance_scale": 0},
    {"guidance_scale": 30},
    {"guidance_scale": 12.25},
    {"seed": 0},
    {"seed": 2**32 - 1},
    {"timeout_s": 1},
    {"timeout_s": 3600},
    {"max_attempts": 1},
    {"max_attempts": 10},
    {"priority": 0},
    {"priority": -1000},
]

BAD_PATH_IDS = ["not-a-uuid", "1", "00000000-0000-0000-0000-00000000000g", "%00", "x" * 300]


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    async with running_app(database_url, settings=web_settings(max_queued_per_user=1000)) as c:
        yield c


@pytest.fixture
async def user(pool: db.Pool) -> User:
    return await make_user(pool, "alice")


async def _counts(pool: db.Pool) -> tuple[int, int, int]:
    row = await db.fetch_one(pool, "queue_counts")
    assert row is not None
    conn_rows = await db.fetch_all(pool, "conversation_list", {"owner": None, "limit": 10_000})
    events = await db.fetch_value(pool, "events_last_seq")
    return row["queued"], len(conn_rows), events


def _assert_error(status: int, body: Any, expected: int, word: str, case: object) -> None:
    assert status == expected, (case, status, body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert word in body["error"]["message"], (case, body)


async def test_every_bad_image_request_is_refused_and_writes_nothing(
    client: Client, user: User, pool: db.Pool
) -> None:
    """Validation: each bad field is 422 naming it (403 for a user raising its priority);
    JSON true is not a number; unknown fields are named; nothing is written."""
    conversation_id = await new_conversation(client, user)
    before = await _counts(pool)
    for fields, expected, word in BAD_IMAGE_REQUESTS:
        response = await client.post(
            f"/api/conversations/{conversation_id}/images",
            json={"prompt": "a fox", **fields},
            headers=user.headers,
        )
        _assert_error(response.status, await response.json(), expected, word, fields)
    assert await _counts(pool) == before


async def test_the_edges_of_every_range_are_accepted(client: Client, user: User) -> None:
    """Validation: the limits themselves are valid (prompt 2000, sides 64 and 2048, steps 1 and
    150, guidance 0 and 30, seed 0 and 2^32-1, timeout 1 and 3600, attempts 1 and 10)."""
    conversation_id = await new_conversation(client, user)
    for fields in GOOD_EDGES:
        job = await enqueue(client, user, conversation_id, **fields)
        for name, value in fields.items():
            stored = job["params"].get(name, job.get(name))
            assert stored == value, (name, stored, value)


async def test_admins_may_raise_priority_within_range(
    client: Client, pool: db.Pool, user: User
) -> None:
    """Validation: priority above 0 is for admins, and only within +-1000."""
    admin = await make_user(pool, "root", admin=True)
    conversation_id = await new_conversation(client, user)
    job = await enqueue(client, admin, conversation_id, priority=1000)
    assert job["priority"] == 1000 and job["queue_position"] == 1
    response = await client.post(
        f"/api/conversations/{conversation_id}/images",
        json={"prompt": "a", "priority": 1001},
        headers=admin.headers,
    )
    _assert_error(response.status, await response.json(), 422, "priority", 1001)


async def test_bodies_that_are_not_json_objects_are_400_and_huge_ones_413(
    client: Client, user: User, pool: db.Pool
) -> None:
    """Validation: not JSON or not an object is 400; over 64 KiB is 413; nothing is written."""
    conversation_id = await new_conversation(client, user)
    before = await _counts(pool)
    path = f"/api/conversations/{conversation_id}/images"
    headers = {**user.headers, "Content-Type": "application/json"}
    for raw in [
        b"",
        b"{",
        b"not json",
        b"[1, 2]",
        b'"prompt"',
        b"null",
        b"\xff\xfe\x00",
        b'{"prompt": NaN}',
        b'{"prompt": "a", "seed": Infinity}',
        b"[" * 10_000 + b"]" * 10_000,
    ]:
        response = await client.post(path, data=raw, headers=headers)
        expected = 413 if len(raw) > 64 * 1024 else 400
        _assert_error(response.status, await response.json(), expected, "", raw[:20])
    huge = json.dumps({"prompt": "a", "negative_prompt": "x" * 70_000}).encode()
    response = await client.post(path, data=huge, headers=headers)
    _assert_error(response.status, await response.json(), 413, "64 KiB", "huge")
    chunked = await client.post(path, data=_chunks(huge), headers=headers)  # no Content-Length
    _assert_error(chunked.status, await chunked.json(), 413, "64 KiB", "chunked")
    lone_surrogate = b'{"prompt": "a\\ud800b"}'
    response = await client.post(path, data=lone_surrogate, headers=headers)
    _assert_error(response.status, await response.json(), 422, "Unicode", "surrogate")
    assert await _counts(pool) == before


async def _chunks(data: bytes) -> Any:
    for start in range(0, len(data), 8192):
        yield data[start : start + 8192]


async def test_malformed_ids_in_paths_are_404_never_500(client: Client, user: User) -> None:
    """Validation: a malformed id in a path names nothing: 404 in the contract's shape."""
    for bad in BAD_PATH_IDS:
        for method, template in [
            ("GET", "/api/conversations/{}"),
            ("GET", "/api/conversations/{}/jobs"),
            ("POST", "/api/conversations/{}/images"),
            ("GET", "/api/jobs/{}"),
            ("GET", "/api/jobs/{}/image"),
            ("POST", "/api/jobs/{}/cancel"),
            ("PATCH", "/api/messages/{}/metadata"),
        ]:
            body = {"prompt": "a"} if method != "GET" else None
            response = await client.request(
                method, template.format(bad), json=body, headers=user.headers
            )
            assert response.status == 404, (method, template, bad, response.status)
            assert (await response.json())["error"]["code"] == "not_found"


async def test_bad_conversation_titles_and_metadata_are_refused(
    client: Client, user: User, pool: db.Pool
) -> None:
    """Validation: titles are strings of at most 200 characters; metadata must be a JSON object
    without the queue's own keys (job_id, status, queue_position, error), NULs or surrogates."""
    for body, expected, word in [
        ({"title": 5}, 422, "title"),
        ({"title": "x" * 201}, 422, "title"),
        ({"title": "a\x00"}, 422, "NUL"),
        ({"name": "x"}, 422, "name"),
    ]:
        response = await client.post("/api/conversations", json=body, headers=user.headers)
        _assert_error(response.status, await response.json(), expected, word, body)

    conversation_id = await new_conversation(client, user)
    job = await enqueue(client, user, conversation_id)
    path = f"/api/messages/{job['message_id']}/metadata"
    for patch, expected, word in [
        ([1, 2], 400, "object"),
        ("text", 400, "object"),
        ({"status": "complete"}, 422, "status"),
        ({"queue_position": 0, "job_id": "x"}, 422, "job_id, queue_position"),
        ({"error": None}, 422, "error"),
        ({"note": "a\x00b"}, 422, "NUL"),
        ({"a\x00": 1}, 422, "NUL"),
        ({"deep": [[{"x": "\x00"}]]}, 422, "NUL"),
        (_nested(40), 422, "nested"),
    ]:
        response = await client.patch(path, json=patch, headers=user.headers)
        _assert_error(response.status, await response.json(), expected, word, patch)
    surrogate = await client.patch(path, data=b'{"k": "\\udc00"}', headers=user.headers)
    _assert_error(surrogate.status, await surrogate.json(), 422, "Unicode", "surrogate")
    message = (
        await (
            await client.get(f"/api/conversations/{conversation_id}", headers=user.headers)
        ).json()
    )["messages"][0]
    assert message["extra_metadata"] == {
        "job_id": job["job_id"],
        "status": "queued",
        "queue_position": 1,
        "error": None,
    }


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"k": value}
    return value


async def test_a_user_over_the_queue_limit_gets_429_naming_it(
    database_url: str, pool: db.Pool
) -> None:
    """Fairness guard: at most N jobs queued per user; the next is 429 stating the limit, and
    other users are not affected."""
    async with running_app(database_url, settings=web_settings(max_queued_per_user=3)) as client:
        alice = await make_user(pool, "alice")
        bob = await make_user(pool, "bob")
        conversation_id = await new_conversation(client, alice)
        for _ in range(3):
            await enqueue(client, alice, conversation_id)
        before = await _counts(pool)
        response = await client.post(
            f"/api/conversations/{conversation_id}/images",
            json={"prompt": "one too many"},
            headers=alice.headers,
        )
        body = await response.json()
        _assert_error(response.status, body, 429, "3", "limit")
        assert body["error"]["code"] == "queue_full"
        assert await _counts(pool) == before
        await enqueue(client, bob, await new_conversation(client, bob))


@pytest.mark.parametrize(
    "overrides",
    [
        {"default_size": 100},
        {"default_size": 4096},
        {"default_timeout_s": 0},
        {"default_max_attempts": 11},
        {"max_queued_per_user": 0},
    ],
)
def test_defaults_the_edge_would_refuse_stop_the_server_at_start(overrides: dict[str, int]) -> None:
    """Configuration: a default no request could carry (GPUQUEUE_DEFAULT_SIZE=100, ...) is
    refused when the app is built, not at every request."""
    with pytest.raises(ValueError):
        create_app(web_settings(**overrides), "postgresql:///unused")
