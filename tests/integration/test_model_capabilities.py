"""Per-model size rules and defaults (issue 13, items 1 and 2): a worker that describes its
model at registration stores the description on the model's row (migration 008); the web edge
refuses sizes the model cannot make with a 422 that names the rule, and fills what a request
leaves out with the model's defaults, which the job's params show."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from queueing import db, workers
from queueing.models import ModelCapabilities, list_models
from tests.integration.web_support import (
    User,
    enqueue,
    make_user,
    new_conversation,
    running_app,
    web_settings,
)

Client = TestClient[web.Request, web.Application]

FLUX = ModelCapabilities(
    size_multiple=16, default_size=1024, default_steps=28, default_guidance=3.5
)
TURBO = ModelCapabilities(size_multiple=8, default_size=512, default_steps=1, default_guidance=0.0)


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[list[Any]]:
    """Worker sessions the test registers; closed (so the workers end) at its end."""
    opened: list[Any] = []
    yield opened
    for conn in opened:
        await conn.close()


async def register(
    database_url: str, sessions: list[Any], model: str, capabilities: ModelCapabilities | None
) -> None:
    conn = await db.connect(database_url, "gpuqueue-test-worker")
    sessions.append(conn)
    await workers.register(
        conn,
        uuid.uuid4(),
        host="test-host",
        device=f"cuda:{len(sessions)}",
        backend="test",
        model=model,
        capabilities=capabilities,
    )


@pytest.fixture
async def client(database_url: str, sessions: list[Any]) -> AsyncIterator[Client]:
    """The app, started after the models are registered (its models list is cached)."""
    await register(database_url, sessions, "flux", FLUX)
    await register(database_url, sessions, "sd-turbo", TURBO)
    await register(database_url, sessions, "plain", None)
    async with running_app(database_url, settings=web_settings(max_queued_per_user=1000)) as c:
        yield c


@pytest.fixture
async def alice(pool: db.Pool) -> User:
    return await make_user(pool, "alice")


async def test_a_size_the_model_cannot_make_is_refused_naming_the_rule(
    client: Client, alice: User
) -> None:
    conversation = await new_conversation(client, alice)
    response = await client.post(
        f"/api/conversations/{conversation}/images",
        json={"prompt": "a fox", "model": "flux", "width": 72, "height": 64},
        headers=alice.headers,
    )
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "unsupported_size"
    assert error["message"] == (
        "width must be a multiple of 16 for model 'flux', the sizes it makes (got 72)"
    )
    made = await enqueue(client, alice, conversation, model="flux", width=80, height=64)
    assert (made["params"]["width"], made["params"]["height"]) == (80, 64)
    # The queue's own rule still holds for a model with no rule of its own.
    for model in ("sd-turbo", "plain"):
        made = await enqueue(client, alice, conversation, model=model, width=72, height=64)
        assert made["params"]["width"] == 72


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("flux", {"width": 1024, "height": 1024, "steps": 28, "guidance_scale": 3.5}),
        ("sd-turbo", {"width": 512, "height": 512, "steps": 1, "guidance_scale": 0.0}),
        ("plain", {"width": 512, "height": 512, "steps": 20, "guidance_scale": 7.5}),
    ],
)
async def test_the_models_defaults_fill_what_the_request_leaves_out(
    client: Client, alice: User, model: str, expected: dict[str, Any]
) -> None:
    conversation = await new_conversation(client, alice)
    made = await enqueue(client, alice, conversation, model=model)
    assert {key: made["params"][key] for key in expected} == expected
    given = await enqueue(
        client, alice, conversation, model=model, steps=3, guidance_scale=2.0, width=64, height=64
    )
    assert {key: given["params"][key] for key in expected} == {
        "width": 64,
        "height": 64,
        "steps": 3,
        "guidance_scale": 2.0,
    }


async def test_get_models_shows_each_models_rule_and_defaults(client: Client, alice: User) -> None:
    response = await client.get("/api/models", headers=alice.headers)
    assert response.status == 200
    found = {row["name"]: row for row in (await response.json())["models"]}
    described = ("size_multiple", "default_size", "default_steps", "default_guidance")
    assert {key: found["flux"][key] for key in described} == FLUX.params()
    assert {key: found["sd-turbo"][key] for key in described} == TURBO.params()
    assert {key: found["plain"][key] for key in described} == dict.fromkeys(described)


async def test_a_worker_that_does_not_describe_its_model_keeps_the_description(
    database_url: str, pool: db.Pool, sessions: list[Any]
) -> None:
    """A stub worker of a model leaves what a diffusers worker of it reported; a worker that
    describes it anew replaces it."""
    await register(database_url, sessions, "flux", FLUX)
    await register(database_url, sessions, "flux", None)

    async def flux() -> dict[str, Any]:
        (row,) = [row for row in await list_models(pool, "tiny") if row["name"] == "flux"]
        return dict(row)

    assert (await flux())["default_steps"] == 28
    schnell = ModelCapabilities(16, 1024, 4, 0.0)
    await register(database_url, sessions, "flux", schnell)
    found = await flux()
    assert (found["default_steps"], found["default_guidance"]) == (4, 0.0)
