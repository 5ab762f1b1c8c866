"""Renaming and deleting conversations, and titles from the first prompt (contract: Conversations
and the page), through a real `gpuqueue web` process and, for a delete under a running job, a
real `gpuqueue worker`."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.commands import WebChild, WorkerChild
from harness.waiting import eventually
from queueing import db, jobs
from tests.helpers import worker_session
from tests.integration.web_support import PNG, HandWorker, User, make_user
from tests.integration.worker_support import gpu_locks, rows, wait_status

Json = dict[str, Any]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, web: WebChild, method: str, path: str, user: User, **kw: Any
) -> tuple[int, Any]:
    async with http.request(method, f"{web.base_url}{path}", headers=user.headers, **kw) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


async def new_user(pool: db.Pool) -> User:
    return await make_user(pool, f"u-{uuid.uuid4().hex[:8]}")


async def create(http: aiohttp.ClientSession, web: WebChild, user: User, **body: Any) -> Json:
    status, conversation = await call(http, web, "POST", "/api/conversations", user, json=body)
    assert status == 201, conversation
    return dict(conversation)


async def submit(
    http: aiohttp.ClientSession,
    web: WebChild,
    user: User,
    conversation_id: str,
    prompt: str,
    model: str | None = None,
) -> Json:
    """A small job; `model` one of the test's own, so no other test's worker takes it."""
    path = f"/api/conversations/{conversation_id}/images"
    body = {"prompt": prompt, "width": 64, "height": 64, "steps": 4, "model": model}
    status, job = await call(http, web, "POST", path, user, json=body)
    assert status == 202, job
    return dict(job)


async def test_rename_stores_the_trimmed_title_and_refuses_bad_ones_with_422(
    web: WebChild, module_pool: db.Pool, http: aiohttp.ClientSession
) -> None:
    """PATCH {"title"}: a string, trimmed, not blank, at most 200 characters, nothing else;
    anything else is 422 and the title stays."""
    user = await new_user(module_pool)
    conversation = await create(http, web, user, title="before")
    path = f"/api/conversations/{conversation['id']}"
    status, renamed = await call(http, web, "PATCH", path, user, json={"title": "  Foxes \n"})
    assert (status, renamed["title"], renamed["id"]) == (200, "Foxes", conversation["id"])
    refused: list[Any] = [
        {},
        {"title": None},
        {"title": 5},
        {"title": "   "},
        {"title": "x" * 201},
        {"title": "a\x00b"},
        {"title": "ok", "color": "red"},
    ]
    for body in refused:
        status, error = await call(http, web, "PATCH", path, user, json=body)
        assert status == 422 and error["error"]["code"] in ("invalid", "unknown_fields"), body
    status, error = await call(http, web, "PATCH", path, user, data=b"[1]")
    assert status == 400, error
    status, listed = await call(http, web, "GET", "/api/conversations", user)
    assert [c["title"] for c in listed["conversations"]] == ["Foxes"]


async def test_another_users_conversation_is_404_to_rename_and_delete(
    web: WebChild, module_pool: db.Pool, http: aiohttp.ClientSession
) -> None:
    """Not yours, or no such id: 404 exactly alike (also with a bad body), and nothing
    changes."""
    owner, other = await new_user(module_pool), await new_user(module_pool)
    conversation = await create(http, web, owner, title="mine")
    job = await submit(http, web, owner, conversation["id"], "a red fox")
    for path in (f"/api/conversations/{conversation['id']}", f"/api/conversations/{uuid.uuid4()}"):
        for body in ({"title": "theirs"}, {"title": " "}, {"stolen": True}):
            status, _ = await call(http, web, "PATCH", path, other, json=body)
            assert status == 404, body
        status, _ = await call(http, web, "DELETE", path, other)
        assert status == 404
    status, kept = await call(http, web, "GET", f"/api/conversations/{conversation['id']}", owner)
    assert (status, kept["title"]) == (200, "mine")
    status, kept_job = await call(http, web, "GET", f"/api/jobs/{job['job_id']}", owner)
    assert (status, kept_job["status"]) == (200, "queued")


async def test_a_new_conversation_takes_its_title_from_its_first_prompt(
    web: WebChild, module_pool: db.Pool, http: aiohttp.ClientSession
) -> None:
    """No title given (or only spaces): the first prompt, on one line, cut to 60 characters;
    later prompts and given titles are left alone."""
    user = await new_user(module_pool)
    untitled = await create(http, web, user)
    assert untitled["title"] == ""
    long_prompt = "a  red fox\nin the snow, " + "very " * 20 + "detailed"
    await submit(http, web, user, untitled["id"], long_prompt)
    await submit(http, web, user, untitled["id"], "a second prompt")
    blank = await create(http, web, user, title="   ")
    await submit(http, web, user, blank["id"], "a lighthouse at dusk")
    titled = await create(http, web, user, title="Mine")
    await submit(http, web, user, titled["id"], "ignored for the title")
    status, listed = await call(http, web, "GET", "/api/conversations", user)
    assert status == 200
    titles = {c["id"]: c["title"] for c in listed["conversations"]}
    expected = ("a red fox in the snow, " + "very " * 20)[:59].rstrip() + "…"
    assert len(expected) == 60
    assert titles == {
        untitled["id"]: expected,
        blank["id"]: "a lighthouse at dusk",
        titled["id"]: "Mine",
    }


@pytest.fixture
async def stub_worker(
    module_database_url: str, tmp_path: Path
) -> AsyncIterator[Callable[[str], WorkerChild]]:
    """A `gpuqueue worker --backend stub --model M` whose jobs run 30 s (so one is running when
    the test deletes it) on a device of its own; killed at the end."""
    children: list[WorkerChild] = []

    def spawn(model: str) -> WorkerChild:
        child = WorkerChild(
            module_database_url,
            tmp_path / "worker.log",
            device=f"cuda:{uuid.uuid4().hex[:6]}",
            args=("--model", model),
            env={
                "GPUQUEUE_STUB_DELAY": "30",
                "GPUQUEUE_POLL_INTERVAL_S": "0.2",
                "GPUQUEUE_GPU_LOCK_DIR": str(tmp_path / "gpu-locks"),
            },
        )
        children.append(child)
        return child

    yield spawn
    for child in children:
        await child.kill()


async def test_delete_cancels_running_and_queued_jobs_through_the_event_stream_and_removes_all(
    web: WebChild,
    module_pool: db.Pool,
    http: aiohttp.ClientSession,
    stub_worker: Callable[[str], WorkerChild],
) -> None:
    """DELETE while a worker runs one of its jobs and another waits: subscribers of the
    conversation and of the jobs get both canceled events, the answer is 204, then nothing of
    it is left (messages, jobs, events, images); the worker stops the job, frees its GPU lock,
    logs no error and takes the next job. A second DELETE is 404."""
    user, model = await new_user(module_pool), f"m-{uuid.uuid4().hex[:8]}"
    worker = stub_worker(model)
    await worker.registered(module_pool)
    conversation = await create(http, web, user, title="doomed")
    cid = conversation["id"]
    running = await submit(http, web, user, cid, "running when deleted", model)
    waiting = await submit(http, web, user, cid, "queued when deleted", model)
    ids = {running["job_id"], waiting["job_id"]}
    await wait_status(module_pool, running["job_id"], "processing", within=30)
    ws_url = f"{web.base_url}/ws"
    async with (
        http.ws_connect(ws_url, headers=user.headers) as by_conversation,
        http.ws_connect(ws_url, headers=user.headers) as by_jobs,
    ):
        for ws, subscription in (
            (by_conversation, {"conversation_id": cid}),
            (by_jobs, {"job_ids": sorted(ids)}),
        ):
            await ws.send_json({"op": "subscribe", **subscription})
            while (await ws.receive_json(timeout=10))["type"] != "subscribed":
                pass
        status, body = await call(http, web, "DELETE", f"/api/conversations/{cid}", user)
        assert (status, body) == (204, None)
        for ws in (by_conversation, by_jobs):
            canceled: set[str] = set()
            while canceled != ids:
                frame = await ws.receive_json(timeout=10)
                if frame["type"] == "canceled":
                    canceled.add(frame["job_id"])
    for path in (f"/api/conversations/{cid}", f"/api/jobs/{running['job_id']}"):
        assert (await call(http, web, "GET", path, user))[0] == 404
    assert (await call(http, web, "DELETE", f"/api/conversations/{cid}", user))[0] == 404
    left = await rows(
        module_pool,
        "SELECT (SELECT count(*) FROM conversations WHERE id = %(c)s)"
        " + (SELECT count(*) FROM messages WHERE conversation_id = %(c)s)"
        " + (SELECT count(*) FROM jobs WHERE conversation_id = %(c)s)"
        " + (SELECT count(*) FROM job_events WHERE conversation_id = %(c)s)"
        " + (SELECT count(*) FROM job_images WHERE job_id = ANY(%(j)s::uuid[])) AS n",
        {"c": cid, "j": sorted(ids)},
    )
    assert left[0]["n"] == 0

    async def lock_freed() -> bool:
        return not await gpu_locks(module_pool)

    await eventually(lock_freed, within=10, what="the deleted job's GPU lock is released")
    other = await create(http, web, user, title="next")
    after = await submit(http, web, user, other["id"], "after the delete", model)
    await wait_status(module_pool, after["job_id"], "processing", within=10)
    worker.check_alive()
    log = worker.log()
    assert "Traceback" not in log and " ERROR " not in log, worker.log_tail(40)


async def test_a_worker_ending_a_deleted_job_is_fenced_and_frees_its_gpu(
    module_database_url: str, module_pool: db.Pool, web: WebChild, http: aiohttp.ClientSession
) -> None:
    """Each worker-side transition of a job whose row is gone (complete, fail, cancel, hand
    back, progress) writes nothing, raises nothing, and releases the GPU lock it names."""
    user, model = await new_user(module_pool), f"m-{uuid.uuid4().hex[:8]}"
    hand = HandWorker(module_database_url, device=f"cuda:{uuid.uuid4().hex[:6]}")
    hand.conn, hand.worker_id = await worker_session(module_database_url, hand.device, model=model)
    try:
        conn = hand.conn
        endings: list[Callable[[jobs.Claim], Awaitable[bool | str | None]]] = [
            lambda c: jobs.complete(conn, c, PNG, release_device=c.gpu_lock),
            lambda c: jobs.fail(
                conn,
                c,
                "x",
                retryable=True,
                backoff=jobs.Backoff(0.01, 0.01),
                release_device=c.gpu_lock,
            ),
            lambda c: jobs.finish_canceled(conn, c, release_device=c.gpu_lock),
            lambda c: jobs.requeue(conn, c, release_device=c.gpu_lock),
        ]
        for end in endings:
            conversation = await create(http, web, user, title="gone")
            await submit(http, web, user, conversation["id"], "claimed, then deleted", model)
            claim = await hand.claim()
            status, _ = await call(
                http, web, "DELETE", f"/api/conversations/{conversation['id']}", user
            )
            assert status == 204
            assert await jobs.report_progress(conn, claim, 1, 4) is None
            assert await jobs.claim_state(conn, claim) == (False, False)
            assert await end(claim) in (False, None)
            assert not await gpu_locks(module_pool)
    finally:
        await hand.close()
