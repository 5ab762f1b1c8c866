"""Tokens and isolation (issue 4, item 3): a user sees and changes only its own conversations,
messages and jobs; another user's ids answer 404 exactly like ids that do not exist; an admin
sees everything."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from queueing import db
from tests.integration.web_support import (
    HandWorker,
    enqueue,
    make_user,
    new_conversation,
    running_app,
)

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    async with running_app(database_url) as c:
        yield c


async def test_another_users_ids_are_404_on_every_endpoint(
    client: Client, pool: db.Pool, database_url: str
) -> None:
    """Isolation: bob gets 404 for alice's conversation, jobs, image, cancel and metadata, the
    same answer as for ids that do not exist, and changes nothing."""
    alice = await make_user(pool, "alice")
    bob = await make_user(pool, "bob")
    conversation_id = await new_conversation(client, alice, "alice's")
    job = await enqueue(client, alice, conversation_id)  # completes below
    queued = await enqueue(client, alice, conversation_id)
    worker = await HandWorker(database_url).start()
    try:
        claim = await worker.claim()
        await worker.complete(claim)
    finally:
        await worker.close()
    assert claim.job_id == uuid.UUID(job["job_id"])

    requests = [
        ("GET", f"/api/conversations/{conversation_id}", None),
        ("GET", f"/api/conversations/{conversation_id}/jobs", None),
        ("POST", f"/api/conversations/{conversation_id}/images", {"prompt": "mine now"}),
        ("GET", f"/api/jobs/{queued['job_id']}", None),
        ("GET", f"/api/jobs/{job['job_id']}/image", None),
        ("POST", f"/api/jobs/{queued['job_id']}/cancel", None),
        ("PATCH", f"/api/messages/{queued['message_id']}/metadata", {"stolen": True}),
    ]
    for method, path, body in requests:
        response = await client.request(method, path, json=body, headers=bob.headers)
        assert response.status == 404, (method, path, response.status)
        theirs = await response.json()
        unknown_path = path.replace(conversation_id, str(uuid.uuid4()))
        for known in (queued["job_id"], job["job_id"], queued["message_id"]):
            unknown_path = unknown_path.replace(known, str(uuid.uuid4()))
        unknown = await client.request(method, unknown_path, json=body, headers=bob.headers)
        assert unknown.status == 404
        assert theirs["error"]["code"] == (await unknown.json())["error"]["code"] == "not_found"

    listed = await (await client.get("/api/conversations", headers=bob.headers)).json()
    assert listed == {"conversations": []}
    # Nothing changed for alice.
    mine = await (
        await client.get(f"/api/conversations/{conversation_id}/jobs", headers=alice.headers)
    ).json()
    assert [j["status"] for j in mine["jobs"]] == ["complete", "queued"]
    conversation = await (
        await client.get(f"/api/conversations/{conversation_id}", headers=alice.headers)
    ).json()
    assert all("stolen" not in m["extra_metadata"] for m in conversation["messages"])
    assert len(conversation["messages"]) == 2


async def test_an_admin_sees_and_acts_on_everything(client: Client, pool: db.Pool) -> None:
    """Isolation: an admin token sees all conversations and jobs and may cancel any job."""
    alice = await make_user(pool, "alice")
    admin = await make_user(pool, "root", admin=True)
    conversation_id = await new_conversation(client, alice)
    job = await enqueue(client, alice, conversation_id)

    read = await client.get(f"/api/conversations/{conversation_id}", headers=admin.headers)
    assert read.status == 200
    assert (await client.get(f"/api/jobs/{job['job_id']}", headers=admin.headers)).status == 200
    own = await (await client.get("/api/conversations", headers=admin.headers)).json()
    assert own == {"conversations": []}  # its own list is its own ...
    every = await (await client.get("/api/conversations?all=true", headers=admin.headers)).json()
    assert [c["id"] for c in every["conversations"]] == [conversation_id]  # ... unless it asks
    # An admin's job in alice's conversation belongs to alice (it counts against her limit).
    theirs = await enqueue(client, admin, conversation_id, priority=10)
    assert (await client.get(f"/api/jobs/{theirs['job_id']}", headers=alice.headers)).status == 200
    canceled = await client.post(f"/api/jobs/{job['job_id']}/cancel", headers=admin.headers)
    assert canceled.status == 200
    assert (await canceled.json())["status"] == "canceled"


async def test_a_user_cannot_list_another_users_conversations_even_with_all(
    client: Client, pool: db.Pool
) -> None:
    """Isolation: ?all=true means nothing for a user."""
    alice = await make_user(pool, "alice")
    bob = await make_user(pool, "bob")
    await new_conversation(client, alice)
    mine = await new_conversation(client, bob)
    listed = await (await client.get("/api/conversations?all=true", headers=bob.headers)).json()
    assert [c["id"] for c in listed["conversations"]] == [mine]
