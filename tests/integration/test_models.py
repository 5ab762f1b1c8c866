"""Models (issue 12, item 1; contract: Models): a worker claims only jobs of its own model,
positions and ETAs are per model, requests name known models only (the default always), GET
/api/models, `model` on jobs and events, and `gpuqueue status` grouped by model."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gpuqueue.status import show_status
from harness.commands import WorkerChild
from harness.waiting import eventually
from queueing import db, jobs
from queueing.conversations import create_conversation
from queueing.jobs import JobRequest
from tests.helpers import worker_session
from tests.integration.web_support import (
    PARAMS,
    HandWorker,
    User,
    enqueue,
    events_only,
    frames_until,
    make_user,
    new_conversation,
    running_app,
    subscribe,
    web_settings,
)
from tests.integration.worker_support import (
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    wait_all_final,
)

Client = TestClient[web.Request, web.Application]
SpawnWorker = Callable[..., WorkerChild]


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    async with running_app(database_url) as c:
        yield c


@pytest.fixture
async def alice(pool: db.Pool) -> User:
    return await make_user(pool, "alice")


async def hand_worker(url: str, model: str, device: str = "cpu") -> HandWorker:
    """A hand-driven worker registered for `model`."""
    hand = HandWorker(url, device)
    hand.conn, hand.worker_id = await worker_session(url, device, model=model)
    return hand


async def submit(pool: db.Pool, user: User, conversation_id: str, model: str, prompt: str) -> str:
    job = await jobs.enqueue(
        pool,
        conversation_id,
        JobRequest(prompt, PARAMS, model=model),
        actor=user.actor,
        max_queued=1000,
    )
    return str(job["job_id"])


async def table_counts(pool: db.Pool) -> dict[str, int]:
    found = await rows(
        pool,
        "SELECT (SELECT count(*) FROM jobs) AS jobs, (SELECT count(*) FROM messages) AS messages,"
        " (SELECT count(*) FROM job_events) AS events, (SELECT count(*) FROM models) AS models",
    )
    return {k: int(v) for k, v in found[0].items()}


async def test_a_worker_process_of_one_model_never_claims_another_models_job(
    database_url: str, pool: db.Pool, alice: User, spawn_worker: SpawnWorker
) -> None:
    """Item 1: `gpuqueue worker --model a` runs the a jobs and leaves b's queued, though a b job
    came first; a worker of b then runs those. Every job ran on a worker of its own model."""
    worker_a = spawn_worker("cuda:0", args=("--model", "a"), GPUQUEUE_STUB_DELAY="0.02")
    await worker_a.registered(pool)
    # b is known because a worker of b registered once (its session is gone now).
    gone_b, _ = await worker_session(database_url, "cuda:9", model="b")
    await gone_b.close()
    conversation_id = str((await create_conversation(pool, actor=alice.actor))["id"])
    order = ["b", "a", "b", "a", "a", "b"]
    ids = [await submit(pool, alice, conversation_id, m, f"{m} {i}") for i, m in enumerate(order)]
    a_ids = [j for j, m in zip(ids, order, strict=True) if m == "a"]
    b_ids = [j for j, m in zip(ids, order, strict=True) if m == "b"]
    await wait_all_final(pool, a_ids)
    # Had worker a ignored the model, it would have started b 0, the oldest job, first.
    still = await rows(pool, "SELECT status FROM jobs WHERE id = ANY(%(ids)s)", {"ids": b_ids})
    assert [r["status"] for r in still] == ["queued"] * 3

    worker_b = spawn_worker("cuda:1", args=("--model", "b"), GPUQUEUE_STUB_DELAY="0.02")
    await worker_b.registered(pool)
    await wait_all_final(pool, ids)
    ran = await rows(
        pool,
        "SELECT j.model AS job_model, w.model AS worker_model, w.pid, j.status FROM jobs AS j"
        " JOIN workers AS w ON w.id = j.worker_id WHERE j.id = ANY(%(ids)s)",
        {"ids": ids},
    )
    assert len(ran) == 6 and {r["status"] for r in ran} == {"complete"}
    assert all(r["job_model"] == r["worker_model"] for r in ran), ran
    assert {r["pid"] for r in ran if r["job_model"] == "a"} == {worker_a.pid}
    assert {r["pid"] for r in ran if r["job_model"] == "b"} == {worker_b.pid}


async def test_a_hand_worker_of_one_model_finds_nothing_in_another_models_queue(
    database_url: str, pool: db.Pool, alice: User
) -> None:
    """Item 1: with only b jobs queued, a claim by a worker of a takes nothing (and no GPU
    lock); its own model's job is then the one it gets."""
    worker_a = await hand_worker(database_url, "a")
    worker_b = await hand_worker(database_url, "b", device="cuda:1")
    conversation_id = str((await create_conversation(pool, actor=alice.actor))["id"])
    b1 = await submit(pool, alice, conversation_id, "b", "b1")
    assert worker_a.conn is not None
    assert await jobs.lock_and_claim(worker_a.conn, worker_a.worker_id) is None
    a1 = await submit(pool, alice, conversation_id, "a", "a1")
    assert str((await worker_a.claim()).job_id) == a1
    assert str((await worker_b.claim()).job_id) == b1
    await worker_a.close()
    await worker_b.close()


async def test_positions_are_per_model(
    client: Client, pool: db.Pool, alice: User, database_url: str
) -> None:
    """Item 6: a1, b1, a2 get positions 1, 1, 2; a start in b moves no job of a."""
    worker_b = await hand_worker(database_url, "b")
    await (await hand_worker(database_url, "a", device="cuda:1")).close()  # a is known
    conversation_id = await new_conversation(client, alice)
    a1 = await enqueue(client, alice, conversation_id, model="a")
    b1 = await enqueue(client, alice, conversation_id, model="b")
    a2 = await enqueue(client, alice, conversation_id, model="a")
    assert [j["queue_position"] for j in (a1, b1, a2)] == [1, 1, 2]
    assert [j["model"] for j in (a1, b1, a2)] == ["a", "b", "a"]

    async def listed() -> dict[str, int]:
        response = await client.get(
            f"/api/conversations/{conversation_id}/jobs", headers=alice.headers
        )
        return {j["job_id"]: j["queue_position"] for j in (await response.json())["jobs"]}

    assert await listed() == {a1["job_id"]: 1, b1["job_id"]: 1, a2["job_id"]: 2}
    assert str((await worker_b.claim()).job_id) == b1["job_id"]
    assert await listed() == {a1["job_id"]: 1, b1["job_id"]: 0, a2["job_id"]: 2}
    await worker_b.close()


async def test_an_unknown_model_is_refused_with_the_known_ones_and_nothing_is_written(
    client: Client, pool: db.Pool, alice: User, database_url: str
) -> None:
    """Contract: a model no worker ever registered is 422 unknown_model, the message lists the
    known models, and no job, message, event or model row is written."""
    for model, device in (("sd-turbo", "cpu"), ("flux-dev", "cuda:1")):
        await (await hand_worker(database_url, model, device)).close()
    conversation_id = await new_conversation(client, alice)
    before = await table_counts(pool)
    response = await client.post(
        f"/api/conversations/{conversation_id}/images",
        json={"prompt": "a red fox", "model": "sdxl-nope"},
        headers=alice.headers,
    )
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "unknown_model"
    assert "sdxl-nope" in error["message"]
    assert "sd-turbo" in error["message"] and "flux-dev" in error["message"]
    assert await table_counts(pool) == before


async def test_the_default_model_is_always_accepted(database_url: str, pool: db.Pool) -> None:
    """Contract: without "model" a job is for the default model (GPUQUEUE_DEFAULT_MODEL), and
    the default may be named though no worker ever registered it; it then is a known model."""
    settings = web_settings(default_model="house-model")
    async with running_app(database_url, settings=settings) as client:
        bob = await make_user(pool, "bob")
        conversation_id = await new_conversation(client, bob)
        plain = await enqueue(client, bob, conversation_id)
        named = await enqueue(client, bob, conversation_id, model="house-model")
        assert (plain["model"], named["model"]) == ("house-model", "house-model")
        assert [plain["queue_position"], named["queue_position"]] == [1, 2]
        response = await client.get("/api/models", headers=bob.headers)
        assert [m["name"] for m in (await response.json())["models"]] == ["house-model"]
        refused = await client.post(
            f"/api/conversations/{conversation_id}/images",
            json={"prompt": "x", "model": "tiny"},  # the built-in name is no default here
            headers=bob.headers,
        )
        assert refused.status == 422


async def test_get_models_lists_each_model_with_its_workers_and_jobs(
    client: Client, pool: db.Pool, alice: User, database_url: str
) -> None:
    """Contract: GET /api/models is {"models": [{"name", "default", "workers", "queued",
    "processing"}]}, by name, the default included; the counts are live. Issue 13 adds each
    model's size rule and defaults (null where no worker described it)."""
    a1 = await hand_worker(database_url, "a", device="cuda:0")
    a2 = await hand_worker(database_url, "a", device="cuda:1")
    b = await hand_worker(database_url, "b", device="cuda:2")
    conversation_id = await new_conversation(client, alice)
    for model in ("a", "a", "a", "b"):
        await enqueue(client, alice, conversation_id, model=model)
    await a1.claim()

    async def models() -> list[dict[str, Any]]:
        response = await client.get("/api/models", headers=alice.headers)
        assert response.status == 200
        body = await response.json()
        assert set(body) == {"models"}
        listed: list[dict[str, Any]] = body["models"]
        return listed

    # Hand workers describe no model: no size rule, no defaults of its own (issue 13).
    undescribed = dict.fromkeys(
        ("size_multiple", "default_steps", "default_guidance", "default_size")
    )
    assert await models() == [
        {"name": "a", "default": False, **undescribed, "workers": 2, "queued": 2, "processing": 1},
        {"name": "b", "default": False, **undescribed, "workers": 1, "queued": 1, "processing": 0},
        {
            "name": "tiny",
            "default": True,
            **undescribed,
            "workers": 0,
            "queued": 0,
            "processing": 0,
        },
    ]
    await b.close()

    async def b_has_no_worker() -> bool:
        return next(m for m in await models() if m["name"] == "b")["workers"] == 0

    await eventually(b_has_no_worker, what="b's worker gone from GET /api/models")
    await a1.close()
    await a2.close()


async def test_jobs_of_a_model_without_a_live_worker_stay_queued_with_no_eta(
    client: Client, pool: db.Pool, alice: User, database_url: str
) -> None:
    """Contract: while no live worker serves b, its jobs stay queued with eta_s null, though a's
    jobs (with a live worker and a cost fit) have an ETA and a's worker is idle."""
    worker_a = await hand_worker(database_url, "a")
    worker_b = await hand_worker(database_url, "b", device="cuda:1")
    conversation_id = await new_conversation(client, alice)
    for model, worker in (("a", worker_a), ("b", worker_b)):  # a cost fit for both models
        await enqueue(client, alice, conversation_id, model=model)
        await worker.complete(await worker.claim())
    await worker_b.close()

    async def b_gone() -> bool:
        found = await rows(pool, "SELECT count(*) AS n FROM live_workers WHERE model = 'b'")
        return int(found[0]["n"]) == 0

    await eventually(b_gone, what="b's worker no longer live")
    a_job = await enqueue(client, alice, conversation_id, model="a")
    b_job = await enqueue(client, alice, conversation_id, model="b")
    a_second = await enqueue(client, alice, conversation_id, model="a")
    assert b_job["eta_s"] is None and b_job["status"] == "queued"
    assert str((await worker_a.claim()).job_id) == a_job["job_id"]

    async def read(job: dict[str, Any]) -> dict[str, Any]:
        response = await client.get(f"/api/jobs/{job['job_id']}", headers=alice.headers)
        found: dict[str, Any] = await response.json()
        return found

    async def a_has_an_eta() -> bool:  # the web's ETA model is re-read once a second
        return isinstance((await read(a_second))["eta_s"], float)

    await eventually(a_has_an_eta, what="an ETA for the served model's job")
    fetched = await read(b_job)
    assert (fetched["status"], fetched["queue_position"], fetched["eta_s"]) == ("queued", 1, None)
    await worker_a.close()


async def test_job_json_and_events_carry_the_model(
    client: Client, pool: db.Pool, alice: User, database_url: str
) -> None:
    """Contract: a job's JSON and each of its events (stored and over the WebSocket) carry
    "model"."""
    worker = await hand_worker(database_url, "a")
    conversation_id = await new_conversation(client, alice)
    ws = await client.ws_connect("/ws", params={"token": alice.token})
    await subscribe(ws, conversation_id=conversation_id)
    job = await enqueue(client, alice, conversation_id, model="a")
    assert job["model"] == "a"
    other = await enqueue(client, alice, conversation_id)
    assert other["model"] == "tiny"
    await worker.complete(await worker.claim())
    frames = events_only(
        await frames_until(
            ws, lambda f: f.get("job_id") == job["job_id"] and f["type"] == "complete"
        )
    )
    seen = {(f["job_id"], f["type"], f["model"]) for f in frames}
    assert {
        (job["job_id"], "queued", "a"),
        (job["job_id"], "processing", "a"),
        (job["job_id"], "complete", "a"),
        (other["job_id"], "queued", "tiny"),
    } <= seen
    stored = await rows(
        pool,
        "SELECT DISTINCT job_id::text, model FROM job_events WHERE conversation_id = %(c)s",
        {"c": conversation_id},
    )
    assert {(r["job_id"], r["model"]) for r in stored} == {
        (job["job_id"], "a"),
        (other["job_id"], "tiny"),
    }
    response = await client.get(f"/api/jobs/{job['job_id']}", headers=alice.headers)
    assert (await response.json())["model"] == "a"
    await ws.close()
    await worker.close()


async def test_status_groups_the_queue_by_model(
    database_url: str, pool: db.Pool, alice: User
) -> None:
    """Item 1: `gpuqueue status` shows each model's own queue, positions from 1 in each, and
    says when no live worker serves a model."""
    worker_a = await hand_worker(database_url, "a")
    await (await hand_worker(database_url, "b", device="cuda:1")).close()
    conversation_id = str((await create_conversation(pool, actor=alice.actor))["id"])
    for i, model in enumerate(("a", "b", "a", "b", "a")):
        await submit(pool, alice, conversation_id, model, f"{model} job {i}")

    async def b_unserved() -> bool:
        found = await rows(pool, "SELECT count(*) AS n FROM live_workers WHERE model = 'b'")
        return int(found[0]["n"]) == 0

    await eventually(b_unserved)
    out = io.StringIO()
    assert await show_status(database_url, as_json=True, out=out) == 0
    data = json.loads(out.getvalue())
    assert [(j["model"], j["queue_position"], j["prompt"]) for j in data["queue"]] == [
        ("a", 1, "a job 0"),
        ("a", 2, "a job 2"),
        ("a", 3, "a job 4"),
        ("b", 1, "b job 1"),
        ("b", 2, "b job 3"),
    ]
    by_name = {m["name"]: m for m in data["models"]}
    assert (by_name["a"]["workers"], by_name["a"]["queued"]) == (1, 3)
    assert (by_name["b"]["workers"], by_name["b"]["queued"]) == (0, 2)

    out = io.StringIO()
    assert await show_status(database_url, out=out) == 0
    lines = out.getvalue().splitlines()

    def section(model: str) -> list[list[str]]:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"queue of {model} "))
        body = []
        for line in lines[start + 2 :]:  # after the section's title and its table header
            if not line.strip():
                break
            body.append(line.split())
        return body

    assert [(r[0], r[-1]) for r in section("a")] == [("1", "0"), ("2", "2"), ("3", "4")]
    assert [(r[0], r[-1]) for r in section("b")] == [("1", "1"), ("2", "3")]
    b_title = next(line for line in lines if line.startswith("queue of b "))
    assert "no live worker serves it" in b_title
    a_title = next(line for line in lines if line.startswith("queue of a "))
    assert "no live worker" not in a_title
    await worker_a.close()
