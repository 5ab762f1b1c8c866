"""Every endpoint of the contract's HTTP API: the success paths and their own error paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from harness.waiting import eventually
from queueing import db, tokens
from tests.integration.web_support import (
    PNG,
    HandWorker,
    User,
    database_gone,
    enqueue,
    make_user,
    new_conversation,
    running_app,
    web_settings,
)
from web.keys import WebOptions

Client = TestClient[web.Request, web.Application]

JOB_KEYS = {
    "job_id",
    "message_id",
    "conversation_id",
    "status",
    "queue_position",
    "eta_s",
    "prompt",
    "params",
    "priority",
    "attempts",
    "max_attempts",
    "progress",
    "error",
    "image_url",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "updated_at",
    "transitions",
}


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    async with running_app(database_url, options=WebOptions(cancel_wait_s=0.5)) as c:
        yield c


@pytest.fixture
async def user(pool: db.Pool) -> User:
    return await make_user(pool, "alice")


async def test_healthz_answers_while_the_database_does(client: Client) -> None:
    """Contract: GET /healthz is 200 {"ok": true} when the database answers."""
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"ok": True}


async def test_healthz_is_503_when_the_database_is_gone(
    pg_admin_url: str, database_url: str
) -> None:
    """Contract: GET /healthz is 503 when the database does not answer."""
    async with running_app(database_url) as c:
        with database_gone(pg_admin_url, database_url):
            response = await c.get("/healthz")
            assert response.status == 503
            assert await response.json() == {"ok": False}


async def test_me_names_the_tokens_user(client: Client, user: User, pool: db.Pool) -> None:
    """Tokens: /api/me says who the token belongs to and whether it is an admin."""
    response = await client.get("/api/me", headers=user.headers)
    assert response.status == 200
    assert await response.json() == {
        "user": "alice",
        "user_id": user.actor.user_id,
        "is_admin": False,
    }
    admin = await make_user(pool, "root", admin=True)
    assert (await (await client.get("/api/me", headers=admin.headers)).json())["is_admin"] is True


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic YWxpY2U6cHc="},
        {"Authorization": "Bearer gq_not_a_real_token"},
        {"Authorization": "Bearer " + "x" * 5000},
    ],
    ids=["none", "empty", "basic", "unknown", "huge"],
)
async def test_every_api_request_needs_a_valid_token(
    client: Client, headers: dict[str, str]
) -> None:
    """Tokens: every /api request needs a valid token; 401 in the contract's error shape."""
    for method, path in [
        ("GET", "/api/me"),
        ("GET", "/api/conversations"),
        ("POST", "/api/conversations"),
        ("GET", "/api/queue"),
        ("GET", "/api/jobs/00000000-0000-0000-0000-000000000000"),
    ]:
        response = await client.request(method, path, headers=headers)
        assert response.status == 401, (method, path)
        body = await response.json()
        assert body["error"]["code"] == "unauthorized"
        assert set(body["error"]) == {"code", "message"}
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_a_revoked_token_stops_working_at_once(
    client: Client, pool: db.Pool, user: User
) -> None:
    """Tokens: revocation takes effect on the very next request (no cache)."""
    assert (await client.get("/api/me", headers=user.headers)).status == 200
    assert await tokens.revoke_token(pool, user.token)
    assert (await client.get("/api/me", headers=user.headers)).status == 401


async def test_conversations_are_created_listed_newest_first_and_read(
    client: Client, user: User
) -> None:
    """Contract: POST /api/conversations is 201 {id, title, created_at}; GET lists and reads."""
    response = await client.post(
        "/api/conversations", json={"title": "first"}, headers=user.headers
    )
    assert response.status == 201
    first = await response.json()
    assert set(first) == {"id", "title", "created_at"}
    assert first["title"] == "first"
    assert response.headers["Location"] == f"/api/conversations/{first['id']}"
    untitled = await client.post("/api/conversations", headers=user.headers)
    assert untitled.status == 201
    second = await untitled.json()
    assert second["title"] == ""

    listed = await (await client.get("/api/conversations", headers=user.headers)).json()
    assert [c["id"] for c in listed["conversations"]] == [second["id"], first["id"]]

    read = await client.get(f"/api/conversations/{first['id']}", headers=user.headers)
    assert read.status == 200
    body = await read.json()
    assert body["id"] == first["id"] and body["title"] == "first" and body["messages"] == []


async def test_posting_an_image_request_queues_a_job(client: Client, user: User) -> None:
    """Contract: POST .../images is 202 with the job; its assistant message holds job_id,
    status and queue_position (R3.1, R5.2)."""
    conversation_id = await new_conversation(client, user)
    response = await client.post(
        f"/api/conversations/{conversation_id}/images",
        json={
            "prompt": "a lighthouse",
            "negative_prompt": "fog",
            "width": 64,
            "height": 128,
            "steps": 5,
            "guidance_scale": 3,
            "seed": 42,
            "priority": -5,
            "max_attempts": 2,
            "timeout_s": 60,
        },
        headers=user.headers,
    )
    assert response.status == 202, await response.text()
    job = await response.json()
    assert set(job) >= JOB_KEYS
    assert response.headers["Location"] == f"/api/jobs/{job['job_id']}"
    assert job["status"] == "queued" and job["queue_position"] == 1
    assert job["prompt"] == "a lighthouse"
    assert job["params"] == {
        "negative_prompt": "fog",
        "width": 64,
        "height": 128,
        "steps": 5,
        "guidance_scale": 3.0,
        "seed": 42,
    }
    assert (job["priority"], job["max_attempts"], job["timeout_s"]) == (-5, 2, 60)
    assert job["attempts"] == 0 and job["progress"] is None and job["image_url"] is None
    assert [t["status"] for t in job["transitions"]] == ["pending", "queued"]
    assert job["created_at"].endswith("+00:00")

    conversation = await (
        await client.get(f"/api/conversations/{conversation_id}", headers=user.headers)
    ).json()
    [message] = conversation["messages"]
    assert message["id"] == job["message_id"] and message["role"] == "assistant"
    assert set(message) == {
        "id",
        "conversation_id",
        "role",
        "content",
        "extra_metadata",
        "created_at",
        "updated_at",
    }
    meta = message["extra_metadata"]
    assert (meta["job_id"], meta["status"], meta["queue_position"]) == (job["job_id"], "queued", 1)


async def test_defaults_fill_what_the_request_leaves_out(database_url: str, pool: db.Pool) -> None:
    """Validation: defaults come from the settings (size, timeout, attempts); a seed is chosen
    so the job is reproducible; nulls take the default."""
    settings = web_settings(default_size=64, default_timeout_s=77, default_max_attempts=4)
    async with running_app(database_url, settings=settings) as client:
        user = await make_user(pool, "alice")
        conversation_id = await new_conversation(client, user)
        job = await enqueue(client, user, conversation_id, seed=None, steps=None)
        params = job["params"]
        assert (params["width"], params["height"], params["steps"]) == (64, 64, 20)
        assert params["guidance_scale"] == 7.5 and params["negative_prompt"] is None
        assert 0 <= params["seed"] <= 2**32 - 1
        assert (job["timeout_s"], job["max_attempts"], job["priority"]) == (77, 4, 0)
        other = await enqueue(client, user, conversation_id)
        assert other["params"]["seed"] != params["seed"]  # 1 in 4 billion


async def test_jobs_are_listed_in_submission_order_with_live_positions(
    client: Client, user: User, worker: HandWorker
) -> None:
    """Contract: GET .../jobs in submission order, positions live (R4.1, R3.2, R4.4)."""
    conversation_id = await new_conversation(client, user)
    submitted = [
        (await enqueue(client, user, conversation_id, prompt=f"p{i}"))["job_id"] for i in range(3)
    ]

    async def listed() -> list[dict[str, Any]]:
        response = await client.get(
            f"/api/conversations/{conversation_id}/jobs", headers=user.headers
        )
        assert response.status == 200
        jobs: list[dict[str, Any]] = (await response.json())["jobs"]
        return jobs

    jobs = await listed()
    assert [j["job_id"] for j in jobs] == submitted
    assert [j["queue_position"] for j in jobs] == [1, 2, 3]
    assert all(set(j) >= JOB_KEYS for j in jobs)

    claim = await worker.claim()
    jobs = await listed()
    assert [(j["status"], j["queue_position"]) for j in jobs] == [
        ("processing", 0),
        ("queued", 1),
        ("queued", 2),
    ]
    await worker.complete(claim)
    jobs = await listed()
    assert [(j["status"], j["queue_position"]) for j in jobs] == [
        ("complete", 0),
        ("queued", 1),
        ("queued", 2),
    ]


async def test_a_job_reads_back_with_its_image_once_complete(
    client: Client, user: User, worker: HandWorker
) -> None:
    """Contract: GET /api/jobs/{id}; the image is 404 before completion, image/png after, with
    the header or through the job's signed image_url."""
    conversation_id = await new_conversation(client, user)
    job = await enqueue(client, user, conversation_id)
    read = await client.get(f"/api/jobs/{job['job_id']}", headers=user.headers)
    assert read.status == 200
    body = await read.json()
    assert body["job_id"] == job["job_id"] and body["eta_s"] is None  # no history, no ETA yet

    image_path = f"/api/jobs/{job['job_id']}/image"
    before = await client.get(image_path, headers=user.headers)
    assert before.status == 404
    assert (await before.json())["error"]["code"] == "not_found"

    await worker.complete(await worker.claim())
    done = await (await client.get(f"/api/jobs/{job['job_id']}", headers=user.headers)).json()
    assert done["status"] == "complete" and done["image_url"].startswith(f"{image_path}?exp=")
    assert [t["status"] for t in done["transitions"]] == [
        "pending",
        "queued",
        "processing",
        "complete",
    ]
    image = await client.get(image_path, headers=user.headers)
    assert image.status == 200 and image.content_type == "image/png"
    assert await image.read() == PNG
    # An <img> cannot send headers: image_url is a signed link that needs none; a token in a
    # URL is never taken (contract: Images).
    signed = await client.get(done["image_url"])
    assert signed.status == 200 and await signed.read() == PNG
    for path in (
        f"{image_path}?token={user.token}",
        f"/api/jobs/{job['job_id']}?token={user.token}",
    ):
        assert (await client.get(path)).status == 401


async def test_eta_appears_once_durations_are_known(
    database_url: str, pool: db.Pool, worker: HandWorker
) -> None:
    """Contract: eta_s is the estimated seconds until the job starts (null when unknown)."""
    async with running_app(database_url, options=WebOptions(eta_ttl_s=0.0)) as client:
        user = await make_user(pool, "alice")
        conversation_id = await new_conversation(client, user)
        first = await enqueue(client, user, conversation_id)
        assert first["eta_s"] is None  # no job has finished: no duration to go by
        await worker.complete(await worker.claim())
        job = await enqueue(client, user, conversation_id)
        assert isinstance(job["eta_s"], float) and job["eta_s"] >= 0
        await worker.claim()  # now one job runs and the next waits behind it
        behind = await enqueue(client, user, conversation_id)
        assert isinstance(behind["eta_s"], float) and behind["eta_s"] >= 0


async def test_cancel_a_queued_job_at_once_and_refuse_a_finished_one(
    client: Client, user: User, worker: HandWorker
) -> None:
    """Contract: POST /cancel is 200 with the job now canceled; 409 when already finished."""
    conversation_id = await new_conversation(client, user)
    job = await enqueue(client, user, conversation_id)
    response = await client.post(f"/api/jobs/{job['job_id']}/cancel", headers=user.headers)
    assert response.status == 200
    canceled = await response.json()
    assert canceled["status"] == "canceled" and canceled["queue_position"] == 0
    again = await client.post(f"/api/jobs/{job['job_id']}/cancel", headers=user.headers)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "conflict"

    done = await enqueue(client, user, conversation_id)
    await worker.complete(await worker.claim())
    response = await client.post(f"/api/jobs/{done['job_id']}/cancel", headers=user.headers)
    assert response.status == 409


async def test_cancel_a_running_job_waits_for_its_worker(
    client: Client, user: User, worker: HandWorker
) -> None:
    """Contract: canceling a processing job answers 200 canceled once its worker stops it."""
    conversation_id = await new_conversation(client, user)
    job = await enqueue(client, user, conversation_id)
    claim = await worker.claim()

    async def worker_notices() -> None:
        # What a real worker does: its next progress report learns of the cancel.
        await eventually(lambda: worker.progress(claim, 1, 10), interval=0.01)
        await worker.finish_canceled(claim)

    stopping = asyncio.create_task(worker_notices())
    response = await client.post(f"/api/jobs/{job['job_id']}/cancel", headers=user.headers)
    await stopping
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "canceled" and body["cancel_requested"] is True


async def test_cancel_a_running_job_whose_worker_is_slow_answers_202(
    client: Client, user: User, worker: HandWorker
) -> None:
    """Contract: a cancel the worker has not acted on yet is 202 with cancel_requested."""
    conversation_id = await new_conversation(client, user)
    job = await enqueue(client, user, conversation_id)
    claim = await worker.claim()
    response = await client.post(f"/api/jobs/{job['job_id']}/cancel", headers=user.headers)
    assert response.status == 202
    body = await response.json()
    assert body["status"] == "processing" and body["cancel_requested"] is True
    await worker.finish_canceled(claim)


async def test_metadata_is_deep_merged(client: Client, user: User) -> None:
    """Contract: PATCH .../metadata deep-merges into extra_metadata (R3.5, R7.1-7.4)."""
    conversation_id = await new_conversation(client, user)
    job = await enqueue(client, user, conversation_id)
    path = f"/api/messages/{job['message_id']}/metadata"
    first = await client.patch(
        path, json={"ui": {"liked": True, "tags": ["a"]}}, headers=user.headers
    )
    assert first.status == 200
    before = await first.json()
    second = await client.patch(
        path, json={"ui": {"note": "nice"}, "extra": 1}, headers=user.headers
    )
    assert second.status == 200
    message = await second.json()
    meta = message["extra_metadata"]
    assert meta["ui"] == {"liked": True, "tags": ["a"], "note": "nice"}
    assert meta["extra"] == 1
    assert (meta["job_id"], meta["status"], meta["queue_position"]) == (job["job_id"], "queued", 1)
    assert message["updated_at"] >= before["updated_at"]


async def test_concurrent_metadata_merges_lose_nothing(client: Client, user: User) -> None:
    """R7.1-R7.3: concurrent PATCHes of one message all land."""
    conversation_id = await new_conversation(client, user)
    job = await enqueue(client, user, conversation_id)
    path = f"/api/messages/{job['message_id']}/metadata"
    responses = await asyncio.gather(
        *(client.patch(path, json={"votes": {f"v{i}": i}}, headers=user.headers) for i in range(20))
    )
    assert all(r.status == 200 for r in responses)
    conversation = await (
        await client.get(f"/api/conversations/{conversation_id}", headers=user.headers)
    ).json()
    votes = conversation["messages"][0]["extra_metadata"]["votes"]
    assert votes == {f"v{i}": i for i in range(20)}


async def test_queue_shows_users_devices_and_admins_lock_holders(
    client: Client, user: User, pool: db.Pool, worker: HandWorker
) -> None:
    """Contract: GET /api/queue; admins see the workers and which job holds the GPU lock."""
    conversation_id = await new_conversation(client, user)
    first = await enqueue(client, user, conversation_id)
    await enqueue(client, user, conversation_id)
    await worker.claim()

    seen = await (await client.get("/api/queue", headers=user.headers)).json()
    assert seen == {"queued": 1, "processing": 1, "workers": [{"device": "cpu", "busy": True}]}

    admin = await make_user(pool, "root", admin=True)
    seen = await (await client.get("/api/queue", headers=admin.headers)).json()
    assert (seen["queued"], seen["processing"]) == (1, 1)
    [w] = seen["workers"]
    assert w["worker_id"] == str(worker.worker_id) and w["device"] == "cpu"
    assert w["host"] == "test-host"
    assert w["job_id"] == first["job_id"] and w["lock_held_s"] >= 0 and w["busy"] is True
    assert {"hostname", "pid", "backend", "started_at"} <= set(w)
    assert seen["oldest_queued_s"] >= 0


async def test_unknown_paths_and_methods_answer_json(client: Client, user: User) -> None:
    """Errors are always {"error": {"code", "message"}}, also from the router."""
    missing = await client.get("/api/nothing-here", headers=user.headers)
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"
    wrong = await client.delete("/api/conversations", headers=user.headers)
    assert wrong.status == 405
    assert (await wrong.json())["error"]["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["Allow"]


async def test_security_headers_on_the_page_and_the_api(client: Client, user: User) -> None:
    """The page may load only its own scripts, styles, images and socket; nothing is sniffed."""
    page = await client.get("/")
    assert page.status in (200, 404)  # 404 until the page is built
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "connect-src 'self'" in csp and "default-src 'none'" in csp
    api = await client.get("/api/me", headers=user.headers)
    for response in (page, api):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert api.headers["Cache-Control"] == "no-store"


async def test_concurrent_token_lookups_each_get_their_own_answer_at_their_round(
    pool: db.Pool, user: User
) -> None:
    """A web process's concurrent lookups go in one statement (TokenLookups), still each checked
    against the tokens as they are then: a token revoked between rounds fails at the next."""
    lookups = tokens.TokenLookups(pool)
    other = await tokens.create_token(pool, "someone-else")
    found = await asyncio.gather(
        *(lookups.authenticate(t) for t in (user.token, other, "gq_unknown", "x" * 300, user.token))
    )
    assert [a.name if a else None for a in found] == [
        user.name, "someone-else", None, None, user.name
    ]  # fmt: skip
    assert await tokens.revoke_token(pool, other)
    again = await asyncio.gather(lookups.authenticate(user.token), lookups.authenticate(other))
    assert [a.name if a else None for a in again] == [user.name, None]
