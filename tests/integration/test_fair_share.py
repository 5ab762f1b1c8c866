"""Fair share (issue 12, items 2 and 6; contract: Fair share): users interleaved by start-time
fair queuing on estimated GPU-seconds, each user's own order kept, weights, and positions that
stay a permutation per model under concurrent enqueues, claims, retries and cancels."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from gpuqueue import cli
from harness.commands import WorkerChild
from queueing import db, jobs, users
from queueing.conversations import create_conversation
from queueing.errors import IllegalTransition, InvalidData
from queueing.jobs import JobRequest
from tests import queries
from tests.helpers import assert_permutation_in_claim_order, queue_snapshot, worker_session
from tests.integration.web_support import (
    PARAMS,
    PNG,
    HandWorker,
    User,
    enqueue,
    frames_until,
    make_user,
    new_conversation,
    running_app,
    subscribe,
)
from tests.integration.worker_support import (
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    wait_all_final,
)

SpawnWorker = Callable[..., WorkerChild]
SMALL = {**PARAMS, "width": 64, "height": 64, "steps": 10}  # 0.041 megapixel-steps
LARGE = {**PARAMS, "width": 128, "height": 64, "steps": 10}  # twice that


async def conversation_of(pool: db.Pool, user: User) -> str:
    return str((await create_conversation(pool, actor=user.actor))["id"])


async def submit(
    pool: db.Pool,
    user: User,
    conversation_id: str,
    prompt: str,
    params: dict[str, Any] | None = None,
    model: str = "tiny",
) -> dict[str, Any]:
    return await jobs.enqueue(
        pool,
        conversation_id,
        JobRequest(prompt, params or PARAMS, model=model),
        actor=user.actor,
        max_queued=1000,
    )


async def position_of(pool: db.Pool, user: User, job_id: str) -> int:
    return int((await jobs.get_job(pool, job_id, actor=user.actor))["queue_position"])


async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    """The real `gpuqueue` command line: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpuqueue.cli",
        "--database-url",
        database_url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_a_newcomers_job_does_not_wait_behind_a_heavy_users_queue(
    database_url: str, pool: db.Pool
) -> None:
    """Contract: while user A has two or more jobs queued and B has none, B's next job of the
    same model, priority, size and steps gets a position no higher than 2; also once some of
    A's jobs have run and B has had jobs before."""
    a, b = await make_user(pool, "heavy"), await make_user(pool, "newcomer")
    a_conv, b_conv = await conversation_of(pool, a), await conversation_of(pool, b)
    a_jobs = [await submit(pool, a, a_conv, f"a{i}") for i in range(6)]
    assert [j["queue_position"] for j in a_jobs] == [1, 2, 3, 4, 5, 6]
    first = await submit(pool, b, b_conv, "b0")
    assert first["queue_position"] <= 2
    worker = await HandWorker(database_url).start()
    claims = [await worker.claim() for _ in range(3)]  # A's and B's heads, one running
    taken = [str(c.job_id) for c in claims]
    assert first["job_id"] in taken[:2]
    for claim in claims[:2]:
        await worker.complete(claim)
    # One of A's jobs running, at least three queued; B has none queued.
    again = await submit(pool, b, b_conv, "b1")
    assert again["queue_position"] <= 2
    assert await position_of(pool, b, again["job_id"]) <= 2
    await worker.close()


async def test_the_heavy_users_subscribers_see_their_jobs_pushed_back(
    database_url: str, pool: db.Pool
) -> None:
    """Item 2: a newcomer's job lands ahead of a heavy user's queued jobs; the heavy user's
    subscription gets a position frame for each job that moved back, and the live listing
    agrees."""
    async with running_app(database_url) as client:
        heavy, newcomer = await make_user(pool, "heavy"), await make_user(pool, "newcomer")
        hc, nc = await new_conversation(client, heavy), await new_conversation(client, newcomer)
        mine = [(await enqueue(client, heavy, hc, prompt=f"h{i}"))["job_id"] for i in range(5)]
        ws = await client.ws_connect("/ws", params={"token": heavy.token})
        await subscribe(ws, conversation_id=hc)
        landed = await enqueue(client, newcomer, nc)
        assert landed["queue_position"] == 2
        expected = {job_id: i + 1 + (i >= 1) for i, job_id in enumerate(mine)}
        view: dict[str, int] = {}

        def caught_up(frame: dict[str, Any]) -> bool:
            if frame["type"] == "position":
                view[frame["job_id"]] = frame["queue_position"]
            return all(view.get(j) == p for j, p in expected.items() if p > 1)

        await frames_until(ws, caught_up)
        assert mine[0] not in view  # the head did not move
        response = await client.get(f"/api/conversations/{hc}/jobs", headers=heavy.headers)
        listed = {j["job_id"]: j["queue_position"] for j in (await response.json())["jobs"]}
        assert listed == expected
        await ws.close()


async def test_each_users_jobs_keep_their_submission_order(
    database_url: str, pool: db.Pool
) -> None:
    """Contract: one user's jobs of equal priority and model are taken in the order that user
    submitted them, whatever their sizes and however they interleave with other users' (who
    are interleaved: the claim order is not first come first served)."""
    people = [await make_user(pool, name) for name in ("u1", "u2", "u3")]
    conversations = [await conversation_of(pool, u) for u in people]
    await users.set_weight(pool, "u3", 3)
    rng = random.Random(12)
    submitted: dict[str, list[str]] = defaultdict(list)
    arrival: list[str] = []
    for i in range(30):
        k = rng.choice([0, 0, 0, 1, 2])  # u1 submits most
        job = await submit(
            pool, people[k], conversations[k], f"{k}-{i}", rng.choice([SMALL, LARGE, PARAMS])
        )
        submitted[people[k].name].append(job["job_id"])
        arrival.append(job["job_id"])
    worker = await HandWorker(database_url).start()
    owner = {j: name for name, ids in submitted.items() for j in ids}
    taken: list[str] = []
    for _ in arrival:
        claim = await worker.claim()
        taken.append(str(claim.job_id))
        await worker.complete(claim)
    for name, ids in submitted.items():
        assert [j for j in taken if owner[j] == name] == ids, name
    assert taken != arrival  # fair share reordered the users' jobs
    await worker.close()


async def test_gpu_seconds_are_shared_by_weight_over_a_drained_run(
    database_url: str, pool: db.Pool, spawn_worker: SpawnWorker
) -> None:
    """Item 6: 60 jobs from users of weights 1, 1 and 2 (set with `gpuqueue user weight`), run
    by a real stub worker whose run time is proportional to a job's size, share the GPU-seconds
    25/25/50 % (each within 10 % of its share). The shares are measured over the window in
    which all three users are still backlogged (from the first start to the end of the first
    user's last job), the only span over which fair queuing promises a split.

    The run is built so that no simpler rule passes: the users submit one after the other (first
    come first served gives the first user everything), the weight-2 user's jobs are twice as
    large (a split by job count gives it 67 %), and its weight is needed for its 50 %. The
    estimates that cut the tags come from the cost model, fitted on a warm-up run of both
    sizes."""
    env = {"GPUQUEUE_STUB_DELAY": "0.01", "GPUQUEUE_STUB_DELAY_PER_WORK_S": "1.5"}
    trainer = await make_user(pool, "trainer")
    warm_conv = await conversation_of(pool, trainer)
    warm_up = spawn_worker("cuda:0", **env)
    await warm_up.registered(pool)
    warm_ids = [
        (await submit(pool, trainer, warm_conv, f"warm {i}", (SMALL, LARGE)[i % 2]))["job_id"]
        for i in range(8)
    ]
    await wait_all_final(pool, warm_ids)
    assert await warm_up.stop() == 0  # the next jobs are all queued before any runs

    a, b, c = [await make_user(pool, name) for name in ("ann", "ben", "cat")]
    code, out, err = await run_cli(database_url, "user", "weight", "cat", "2")
    assert code == 0, err
    assert "cat" in out
    plan = [(a, SMALL), (b, SMALL), (c, LARGE)]
    owner: dict[str, str] = {}
    order: dict[str, list[str]] = defaultdict(list)
    for user, params in plan:
        conv = await conversation_of(pool, user)
        for i in range(20):
            job_id = (await submit(pool, user, conv, f"{user.name} {i}", params))["job_id"]
            owner[job_id] = user.name
            order[user.name].append(job_id)
    ran = spawn_worker("cuda:0", **env)
    await ran.registered(pool)
    await wait_all_final(pool, list(owner), within=60)

    done = await rows(
        pool,
        "SELECT id::text, status, started_at, finished_at FROM jobs WHERE id = ANY(%(ids)s)"
        " ORDER BY started_at",
        {"ids": list(owner)},
    )
    assert {r["status"] for r in done} == {"complete"}
    for name, ids in order.items():  # each user's own order kept
        assert [r["id"] for r in done if owner[r["id"]] == name] == ids, name
    start = done[0]["started_at"]
    end = min(max(r["finished_at"] for r in done if owner[r["id"]] == n) for n in order)
    seconds = dict.fromkeys(order, 0.0)
    for r in done:
        seconds[owner[r["id"]]] += overlap(r["started_at"], r["finished_at"], start, end)
    total = sum(seconds.values())
    shares = {name: s / total for name, s in seconds.items()}
    for name, target in (("ann", 0.25), ("ben", 0.25), ("cat", 0.5)):
        assert abs(shares[name] - target) <= 0.1 * target, (shares, seconds)


def overlap(a0: datetime, a1: datetime, b0: datetime, b1: datetime) -> float:
    return max(0.0, (min(a1, b1) - max(a0, b0)).total_seconds())


async def test_user_weight_sets_the_weight(database_url: str, pool: db.Pool) -> None:
    """`gpuqueue user weight NAME W` stores W; an unknown user is refused (exit 1) and a bad
    weight too (exit 2), each with a message, and neither changes anything."""
    await make_user(pool, "dora")

    async def weight() -> float:
        found = await rows(pool, "SELECT weight FROM users WHERE name = 'dora'")
        return float(found[0]["weight"])

    assert await weight() == 1.0
    code, out, err = await run_cli(database_url, "user", "weight", "dora", "2.5")
    assert (code, err) == (0, "")
    assert "2.5" in out and await weight() == 2.5
    code, out, err = await run_cli(database_url, "user", "weight", "nobody", "2")
    assert code == 1 and "nobody" in err and out == ""
    code, out, err = await run_cli(database_url, "user", "weight", "dora", "0")
    assert code == 2 and "weight" in err and out == ""
    assert await weight() == 2.5
    names = await rows(pool, "SELECT name FROM users ORDER BY name")
    assert [r["name"] for r in names] == ["dora"]


@pytest.mark.parametrize("value", ["0", "-1", "1001", "nan", "inf", "abc", ""])
def test_user_weight_refuses_a_weight_out_of_range(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A weight is a finite number above 0 and at most 1000 (users_weight_in_range): the command
    line refuses anything else before it connects (the URL here points nowhere)."""
    argv = ["--database-url", "postgresql://nowhere.invalid/x", "user", "weight", "dora", value]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "weight" in capsys.readouterr().err


async def test_the_database_refuses_a_weight_out_of_range(pool: db.Pool) -> None:
    """users_weight_in_range: the schema refuses what the command line would."""
    await make_user(pool, "eve")
    for bad in (0.0, -2.0, 1000.5):
        with pytest.raises(InvalidData, match="users_weight_in_range"):
            await users.set_weight(pool, "eve", bad)


async def test_positions_stay_a_permutation_per_model_under_fair_share_load(
    database_url: str,
) -> None:
    """Items 2 and 6 (R4.5 per model): four users of different weights enqueue jobs of two models
    and three sizes, and cancel some, while workers of both models claim, complete and fail
    (retry) jobs. Every snapshot is a permutation 1..n per model in claim order, each user's
    queued jobs stay in their order; and, replaying the event log in seq order, each queued
    event recorded the exact rank its job held among its model's queued jobs at that moment."""
    url = db.with_lock_timeout(database_url, "500ms")
    pool = db.make_pool(url, "fair-storm", min_size=8, max_size=16)
    await pool.open()
    people = [await make_user(pool, f"user{i}") for i in range(4)]
    for person, weight in zip(people, (1, 1, 2, 0.5), strict=True):
        await users.set_weight(pool, person.name, weight)
    conversations = {p.name: await conversation_of(pool, p) for p in people}
    for model, device in (("m1", "gpu-x"), ("m2", "gpu-y")):  # both models known
        session, _ = await worker_session(url, device, model=model)
        await session.close()
    stop = asyncio.Event()
    snapshots = 0

    async def producer(person: User, seed: int) -> None:
        rng = random.Random(seed)
        for n in range(40):
            job = await jobs.enqueue(
                pool,
                conversations[person.name],
                JobRequest("p", rng.choice([SMALL, LARGE, PARAMS]), model=rng.choice(["m1", "m2"])),
                actor=person.actor,
                max_queued=10_000,
            )
            if n % 6 == 2:
                with contextlib.suppress(IllegalTransition):
                    await jobs.cancel(pool, job["job_id"], actor=person.actor)

    async def consumer(model: str, device: str) -> None:
        session, worker_id = await worker_session(url, device, model=model)
        n = 0
        async with session:
            while not stop.is_set():
                claim = await jobs.lock_and_claim(session, worker_id)
                if claim is None:
                    await asyncio.sleep(0.005)
                    continue
                n += 1
                if n % 5 == 0 and claim.attempts < 2:
                    await jobs.fail(
                        session,
                        claim,
                        "flaky",
                        retryable=True,
                        backoff=jobs.Backoff(0.01, 0.01),
                        release_device=claim.gpu_lock,
                    )
                else:
                    await jobs.complete(session, claim, PNG, release_device=claim.gpu_lock)

    async def observer() -> None:
        nonlocal snapshots
        while not stop.is_set():
            snapshot = await queue_snapshot(pool)
            assert_permutation_in_claim_order(snapshot)
            snapshots += 1

    consumers = [
        asyncio.create_task(consumer(model, device))
        for model, device in (("m1", "gpu0"), ("m1", "gpu1"), ("m2", "gpu2"))
    ]
    watchers = [asyncio.create_task(observer()) for _ in range(2)]
    await asyncio.gather(*(producer(p, i) for i, p in enumerate(people)))
    stop.set()
    await asyncio.gather(*consumers, *watchers)
    assert snapshots > 10
    assert_permutation_in_claim_order(await queue_snapshot(pool))
    await replay_positions(pool)
    await pool.close()


async def replay_positions(pool: db.Pool) -> None:
    """Replay every event in seq order (which is commit order: the event lock is held to commit)
    over each job's fixed claim key, checking each queued event's recorded position against the
    rank the replayed queue gives it."""
    events = await rows(
        pool,
        "SELECT e.seq, e.job_id, e.model, e.status, e.queue_position,"
        " j.priority, j.start_tag, j.queue_seq"
        " FROM job_events AS e JOIN jobs AS j ON j.id = e.job_id ORDER BY e.seq",
    )
    queued: dict[str, dict[Any, tuple[int, float, int]]] = defaultdict(dict)
    checked = 0
    for e in events:
        model_queue = queued[e["model"]]
        if e["status"] == "queued":
            key = (-e["priority"], e["start_tag"], e["queue_seq"])
            model_queue[e["job_id"]] = key
            rank = 1 + sum(1 for k in model_queue.values() if k < key)
            assert e["queue_position"] == rank, (e["seq"], e["queue_position"], rank)
            checked += 1
        elif e["status"] != "pending":
            model_queue.pop(e["job_id"], None)
    assert checked > 100
    # Replayed to the end, the queue is what the database holds now.
    now = await queries.fetch_all(pool, "queue_position_audit")
    assert {(r["model"], r["job_id"]) for r in now} == {
        (m, j) for m, q in queued.items() for j in q
    }


async def test_a_weight_counts_for_jobs_queued_from_then_on(
    database_url: str, pool: db.Pool
) -> None:
    """`gpuqueue user weight`: a user of weight 4 gets four starts to a weight-1 user's one while
    both are backlogged; the jobs already waiting keep their places and tags."""
    light, heavy = await make_user(pool, "light"), await make_user(pool, "heavy")
    lc, hc = await conversation_of(pool, light), await conversation_of(pool, heavy)
    waiting = [await submit(pool, light, lc, f"l{i}") for i in range(2)]
    tags = "SELECT start_tag, finish_tag FROM jobs WHERE id = ANY(%(ids)s) ORDER BY queue_seq"
    ids = {"ids": [j["job_id"] for j in waiting]}
    before = await rows(pool, tags, ids)
    assert await users.set_weight(pool, "light", 4) == 4.0
    assert [await position_of(pool, light, j["job_id"]) for j in waiting] == [1, 2]
    assert await rows(pool, tags, ids) == before
    worker = await HandWorker(database_url).start()
    for _ in waiting:
        await worker.complete(await worker.claim())
    owner = {(await submit(pool, heavy, hc, f"h{i}"))["job_id"]: "heavy" for i in range(8)}
    owner |= {(await submit(pool, light, lc, f"l{i}"))["job_id"]: "light" for i in range(8)}
    taken = []
    for _ in range(10):  # the first ten starts: light runs out of jobs after them
        claim = await worker.claim()
        taken.append(owner[str(claim.job_id)])
        await worker.complete(claim)
    await worker.close()
    assert (taken.count("light"), taken.count("heavy")) == (8, 2), taken
