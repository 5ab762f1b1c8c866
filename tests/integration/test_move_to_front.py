"""Move to the front of my own jobs (issue 12, item 3; contract: Fair share): POST
/api/jobs/{id}/move {"to": "front"} swaps slots within the owner's queued jobs of the model, so
no other user's job changes position; its errors; what subscribers see; and moves under load."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from queueing import db, jobs
from queueing.conversations import create_conversation
from queueing.errors import IllegalTransition
from queueing.jobs import JobRequest
from tests import queries
from tests.helpers import assert_permutation_in_claim_order, queue_snapshot, worker_session
from tests.integration.web_support import (
    PARAMS,
    PNG,
    HandWorker,
    User,
    enqueue,
    events_only,
    frames_until,
    make_user,
    new_conversation,
    quiet,
    running_app,
    subscribe,
)

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    async with running_app(database_url) as c:
        yield c


@pytest.fixture
async def alice(pool: db.Pool) -> User:
    return await make_user(pool, "alice")


@pytest.fixture
async def bob(pool: db.Pool) -> User:
    return await make_user(pool, "bob")


async def move(client: Client, user: User, job_id: str, body: Any = None) -> Any:
    return await client.post(
        f"/api/jobs/{job_id}/move",
        json={"to": "front"} if body is None else body,
        headers=user.headers,
    )


async def positions(client: Client, *users_conversations: tuple[User, str]) -> dict[str, int]:
    """Every job's live position, as its owner's listing shows it."""
    found: dict[str, int] = {}
    for user, conversation_id in users_conversations:
        response = await client.get(
            f"/api/conversations/{conversation_id}/jobs", headers=user.headers
        )
        found |= {j["job_id"]: j["queue_position"] for j in (await response.json())["jobs"]}
    return found


async def interleaved_queue(
    client: Client, alice: User, bob: User
) -> tuple[str, str, list[str], list[str]]:
    """alice a0..a3 and bob b0..b2, submitted a0 b0 a1 b1 a2 a3 b2: fair share ranks them
    a0 b0 a1 b1 a2 b2 a3."""
    ac, bc = await new_conversation(client, alice), await new_conversation(client, bob)
    a: list[str] = []
    b: list[str] = []
    for who in "ababaab":
        if who == "a":
            a.append((await enqueue(client, alice, ac, prompt=f"a{len(a)}"))["job_id"])
        else:
            b.append((await enqueue(client, bob, bc, prompt=f"b{len(b)}"))["job_id"])
    return ac, bc, a, b


async def test_a_moved_job_takes_its_owners_earliest_place_and_no_one_else_moves(
    client: Client, alice: User, bob: User, database_url: str
) -> None:
    """Contract: the job takes the earliest place among its owner's queued jobs of its model;
    those shift back one place each; no other user's job, and no job of the owner's other
    model, changes position; the workers then take it first."""
    ac, bc, a, b = await interleaved_queue(client, alice, bob)
    other_model, _ = await worker_session(database_url, "cuda:5", model="m2")
    elsewhere = (await enqueue(client, alice, ac, model="m2"))["job_id"]
    before = await positions(client, (alice, ac), (bob, bc))
    assert [before[j] for j in (a[0], b[0], a[1], b[1], a[2], b[2], a[3])] == [1, 2, 3, 4, 5, 6, 7]
    assert before[elsewhere] == 1

    response = await move(client, alice, a[3])
    assert response.status == 200, await response.text()
    moved = await response.json()
    assert (moved["job_id"], moved["status"], moved["queue_position"]) == (a[3], "queued", 1)
    after = await positions(client, (alice, ac), (bob, bc))
    assert [after[j] for j in (a[3], a[0], a[1], a[2])] == [1, 3, 5, 7]
    assert {j: after[j] for j in b} == {j: before[j] for j in b}
    assert after[elsewhere] == 1

    worker = await HandWorker(database_url).start()
    assert str((await worker.claim()).job_id) == a[3]
    await worker.close()
    await other_model.close()


async def test_moving_a_job_from_the_middle_shifts_only_the_jobs_ahead_of_it(
    client: Client, alice: User, bob: User
) -> None:
    """The owner's jobs behind the moved one keep their places; moving the first is a no-op."""
    ac, bc, a, b = await interleaved_queue(client, alice, bob)
    before = await positions(client, (alice, ac), (bob, bc))
    assert (await move(client, alice, a[2])).status == 200
    after = await positions(client, (alice, ac), (bob, bc))
    assert [after[j] for j in (a[2], a[0], a[1], a[3])] == [1, 3, 5, 7]
    assert {j: after[j] for j in b} == {j: before[j] for j in b}
    assert (await move(client, alice, a[2])).status == 200  # already first
    assert await positions(client, (alice, ac), (bob, bc)) == after


async def test_only_a_queued_job_moves(
    client: Client, alice: User, bob: User, worker: HandWorker, pool: db.Pool
) -> None:
    """Contract: 409 when the job is not queued (running, finished, canceled); nothing moves."""
    ac, bc, a, _ = await interleaved_queue(client, alice, bob)
    claim = await worker.claim()
    assert str(claim.job_id) == a[0]
    response = await move(client, alice, a[0])
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "conflict"
    await worker.complete(claim)
    assert (await move(client, alice, a[0])).status == 409
    canceled = await client.post(f"/api/jobs/{a[1]}/cancel", headers=alice.headers)
    assert canceled.status == 200
    before = await positions(client, (alice, ac), (bob, bc))
    assert (await move(client, alice, a[1])).status == 409
    assert await positions(client, (alice, ac), (bob, bc)) == before


async def test_another_users_job_is_not_found_and_an_admin_may_move_any(
    client: Client, alice: User, bob: User, pool: db.Pool
) -> None:
    """A user sees only its own jobs: moving another's is 404 and changes nothing; an admin
    moves any user's job within that user's own jobs."""
    ac, bc, a, b = await interleaved_queue(client, alice, bob)
    before = await positions(client, (alice, ac), (bob, bc))
    response = await move(client, bob, a[3])
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    assert (await move(client, bob, "not-a-job-id")).status == 404
    assert await positions(client, (alice, ac), (bob, bc)) == before
    root = await make_user(pool, "root", admin=True)
    assert (await move(client, root, b[2])).status == 200
    after = await positions(client, (alice, ac), (bob, bc))
    assert [after[j] for j in (b[2], b[0], b[1])] == [2, 4, 6]
    assert {j: after[j] for j in a} == {j: before[j] for j in a}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"to": "back"}, 422),
        ({"to": "FRONT"}, 422),
        ({"to": 1}, 422),
        ({}, 422),
        ({"to": "front", "by": 2}, 422),
        ([], 400),
        ("front", 400),
    ],
)
async def test_a_bad_move_is_refused_and_changes_nothing(
    client: Client, alice: User, bob: User, body: Any, status: int
) -> None:
    """Contract errors: a body other than {"to": "front"} is 422 (400 when not a JSON object),
    and no position changes."""
    ac, bc, a, _ = await interleaved_queue(client, alice, bob)
    before = await positions(client, (alice, ac), (bob, bc))
    response = await move(client, alice, a[3], body)
    assert response.status == status, await response.text()
    assert set(await response.json()) == {"error"}
    assert await positions(client, (alice, ac), (bob, bc)) == before


async def test_subscribers_see_the_move(
    client: Client, alice: User, bob: User, pool: db.Pool
) -> None:
    """The move is a queued event of the moved job (its new position; stored with the reason)
    and position frames for the owner's jobs it pushed back; the other user's subscription gets
    no position frame, for none of their jobs moved."""
    ac, bc, a, _ = await interleaved_queue(client, alice, bob)
    ws_a = await client.ws_connect("/ws", params={"token": alice.token})
    ws_b = await client.ws_connect("/ws", params={"token": bob.token})
    await subscribe(ws_a, conversation_id=ac)
    await subscribe(ws_b, conversation_id=bc)
    assert (await move(client, alice, a[3])).status == 200
    expected = {a[0]: 3, a[1]: 5, a[2]: 7}
    view: dict[str, int] = {}

    def caught_up(frame: dict[str, Any]) -> bool:
        if frame["type"] == "position":
            view[frame["job_id"]] = frame["queue_position"]
        return all(view.get(j) == p for j, p in expected.items())

    frames = await frames_until(ws_a, caught_up)
    [event] = events_only(frames)
    assert (event["type"], event["job_id"], event["queue_position"]) == ("queued", a[3], 1)
    assert [f for f in await quiet(ws_a) if f["type"] == "position"] == []
    assert [f for f in await quiet(ws_b) if f["type"] == "position"] == []
    stored = await queries.fetch_all(pool, "job_events_of", {"job_id": a[3]})
    assert stored[-1]["status"] == "queued" and stored[-1]["queue_position"] == 1
    assert stored[-1]["detail"] == {"reason": "moved to the front"}
    await ws_a.close()
    await ws_b.close()


async def test_positions_stay_a_permutation_while_jobs_move_under_load(
    database_url: str,
) -> None:
    """Moves of random queued jobs (several at once for one user) beside concurrent enqueues,
    claims and cancels: every snapshot is a permutation per model in claim order, no statement
    deadlocks or hits the lock timeout, ."""
    url = db.with_lock_timeout(database_url, "500ms")
    pool = db.make_pool(url, "move-storm", min_size=8, max_size=16)
    await pool.open()
    people = [await make_user(pool, f"mover{i}") for i in range(3)]
    conversations = {
        p.name: str((await create_conversation(pool, actor=p.actor))["id"]) for p in people
    }
    stop = asyncio.Event()
    snapshots = moves = 0
    errors: list[BaseException] = []

    async def producer(person: User, seed: int) -> None:
        rng = random.Random(seed)
        for n in range(40):
            job = await jobs.enqueue(
                pool,
                conversations[person.name],
                JobRequest("p", rng.choice([PARAMS, {**PARAMS, "width": 128}])),
                actor=person.actor,
                max_queued=10_000,
            )
            if n % 9 == 4:
                with contextlib.suppress(IllegalTransition):
                    await jobs.cancel(pool, job["job_id"], actor=person.actor)

    async def mover(person: User, seed: int) -> None:
        nonlocal moves
        rng = random.Random(seed)
        while not stop.is_set():
            queued = await queue_snapshot(pool)
            ids = [r["job_id"] for r in queued if r["user_id"] == person.actor.user_id]
            if not ids:
                await asyncio.sleep(0.005)
                continue
            try:
                await jobs.move_to_front(pool, rng.choice(ids), actor=person.actor)
                moves += 1
            except IllegalTransition:
                pass  # started or canceled since the read
            except Exception as exc:  # recorded: the test fails on it
                errors.append(exc)

    async def consumer(device: str) -> None:
        session, worker_id = await worker_session(url, device)
        async with session:
            while not stop.is_set():
                claim = await jobs.lock_and_claim(session, worker_id)
                if claim is None:
                    await asyncio.sleep(0.005)
                    continue
                await jobs.complete(session, claim, PNG, release_device=claim.gpu_lock)

    async def observer() -> None:
        nonlocal snapshots
        while not stop.is_set():
            assert_permutation_in_claim_order(await queue_snapshot(pool))
            snapshots += 1

    background = [
        *(asyncio.create_task(mover(p, i)) for i, p in enumerate(people)),
        asyncio.create_task(mover(people[0], 99)),  # two movers for one user
        *(asyncio.create_task(consumer(f"gpu{i}")) for i in range(2)),
        *(asyncio.create_task(observer()) for _ in range(2)),
    ]
    await asyncio.gather(*(producer(p, 10 + i) for i, p in enumerate(people)))
    stop.set()
    await asyncio.gather(*background)
    assert errors == [], [str(e) for e in errors]
    assert snapshots > 10 and moves > 20
    assert_permutation_in_claim_order(await queue_snapshot(pool))
    await pool.close()
