"""The cost model and the ETA (issue 12, items 4 and 6; contract: ETA): run times learned per
model and host from finished jobs by size and steps, each job's estimate stored at enqueue, and
an eta_s that rises with the position."""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Callable
from typing import Any

from harness.commands import WorkerChild
from harness.waiting import eventually
from queueing import db, jobs, positions
from queueing.conversations import create_conversation
from queueing.cost_model import CostFit
from queueing.jobs import JobRequest
from tests import queries
from tests.helpers import worker_session
from tests.integration.web_support import PARAMS, HandWorker, User, make_user, running_app
from tests.integration.worker_support import (
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    wait_all_final,
)
from web.keys import WebOptions

SpawnWorker = Callable[..., WorkerChild]
STEPS = 10
SIZES = {"small": (64, 64), "medium": (128, 128), "large": (256, 256)}


def params(size: str) -> dict[str, Any]:
    width, height = SIZES[size]
    return {**PARAMS, "width": width, "height": height, "steps": STEPS}


def near(eta: float, expected: float) -> bool:
    """Within what a test can tell: the running job has run for a moment already when an ETA is
    read, and ETAs are rounded to 0.1 s."""
    return abs(eta - expected) <= 0.5


def work(size: str) -> float:
    """Megapixel-steps, as gq_job_work counts them."""
    width, height = SIZES[size]
    return STEPS * width * height / 1e6


async def submit(
    pool: db.Pool, user: User, conversation_id: str, size: str, prompt: str = "p"
) -> dict[str, Any]:
    return await jobs.enqueue(
        pool,
        conversation_id,
        JobRequest(prompt, params(size)),
        actor=user.actor,
        max_queued=1000,
    )


async def test_the_cost_model_converges_on_the_stubs_proportional_delays(
    pool: db.Pool, spawn_worker: SpawnWorker
) -> None:
    """Item 6: jobs of three sizes run by a real stub worker whose delay is 0.05 s plus 0.6 s per
    megapixel-step: the fitted cost (per model and host) has that slope within 20 %, predicts
    each size's measured run time within 20 % and the stub's own delay within 25 %; and the
    jobs queued next store that prediction as their estimate."""
    base_s, per_work_s = 0.05, 0.6
    worker = spawn_worker(
        "cuda:0",
        GPUQUEUE_STUB_DELAY=str(base_s),
        GPUQUEUE_STUB_DELAY_PER_WORK_S=str(per_work_s),
    )
    registration = await worker.registered(pool)
    user = await make_user(pool, "alice")
    conversation_id = str((await create_conversation(pool, actor=user.actor))["id"])
    order = [size for _ in range(4) for size in SIZES]
    ids = {(await submit(pool, user, conversation_id, size))["job_id"]: size for size in order}
    await wait_all_final(pool, list(ids), within=30)
    assert await worker.stop() == 0

    measured: dict[str, list[float]] = {size: [] for size in SIZES}
    for row in await rows(
        pool,
        "SELECT id::text, status,"
        " extract(epoch FROM finished_at - started_at)::float8 AS run_s FROM jobs",
    ):
        assert row["status"] == "complete"
        measured[ids[row["id"]]].append(row["run_s"])
    eta = await positions.eta_model(pool)
    assert set(eta.fits) == {("tiny", registration["host"])}
    fit = eta.cost("tiny")
    assert fit.samples == len(order)
    assert abs(fit.slope_s - per_work_s) <= 0.2 * per_work_s, fit
    for size, runs in measured.items():
        predicted = fit.run_s(work(size))
        actual = statistics.median(runs)
        nominal = base_s + per_work_s * work(size)
        assert abs(predicted - actual) <= 0.2 * actual, (size, predicted, runs, fit)
        assert abs(predicted - nominal) <= 0.25 * nominal, (size, predicted, nominal, fit)

    for size in SIZES:  # the estimate each new job stores, which its fair-share tags come from
        job = await submit(pool, user, conversation_id, size)
        found = await rows(
            pool, "SELECT estimate_s, work FROM jobs WHERE id = %(id)s", {"id": job["job_id"]}
        )
        assert found[0]["work"] == work(size)
        assert abs(found[0]["estimate_s"] - fit.run_s(work(size))) < 1e-6


async def known_run_times(
    database_url: str, pool: db.Pool, user: User, conversation_id: str, host: str
) -> CostFit:
    """Cost-model data with exact run times: jobs of each size completed by a hand worker on
    `host`, made to have run 1 s + 20 s per megapixel-step. Returns the fit they give."""
    session, worker_id = await worker_session(database_url, "cuda:9", host=host)
    hand = HandWorker(database_url, "cuda:9", worker_id, session)
    for size in list(SIZES) * 2:
        await submit(pool, user, conversation_id, size)
        claim = await hand.claim()
        await hand.complete(claim)
        await queries.fetch_all(
            pool, "job_set_run_time", {"job_id": claim.job_id, "run_s": 1.0 + 20.0 * work(size)}
        )
    await hand.close()
    fit = (await positions.eta_model(pool)).cost("tiny")
    assert abs(fit.intercept_s - 1.0) < 0.01 and abs(fit.slope_s - 20.0) < 0.01, fit
    return fit


async def queued_etas(pool: db.Pool, user: User, conversation_id: str) -> list[tuple[int, Any]]:
    listed = await jobs.list_jobs(pool, conversation_id, actor=user.actor)
    return sorted(
        (j["queue_position"], j["eta_s"]) for j in listed["jobs"] if j["status"] == "queued"
    )


async def test_eta_rises_with_position_and_sums_the_jobs_ahead(
    database_url: str, pool: db.Pool
) -> None:
    """Contract: eta_s is the remaining time of the running job plus the expected run time of
    every job ahead; on one GPU it rises with each position by the cost of the job ahead."""
    user = await make_user(pool, "alice")
    conversation_id = str((await create_conversation(pool, actor=user.actor))["id"])
    fit = await known_run_times(database_url, pool, user, conversation_id, "test-host")
    worker = await HandWorker(database_url, "cuda:0").start()
    running = await submit(pool, user, conversation_id, "large")
    assert str((await worker.claim()).job_id) == running["job_id"]
    rng = random.Random(4)
    sizes = [rng.choice(list(SIZES)) for _ in range(12)]
    for size in sizes:
        await submit(pool, user, conversation_id, size)
    etas = await queued_etas(pool, user, conversation_id)
    assert [p for p, _ in etas] == list(range(1, 13))
    values = [e for _, e in etas]
    assert all(isinstance(e, float) for e in values), values
    assert all(a < b for a, b in itertools.pairwise(values)), values
    left = fit.run_s(work("large"))
    expected = [left + sum(fit.run_s(work(s)) for s in sizes[:k]) for k in range(12)]
    assert all(near(e, x) for e, x in zip(values, expected, strict=True)), (values, expected)
    await worker.close()


async def test_eta_rises_with_position_when_two_gpus_serve_the_model(
    database_url: str, pool: db.Pool
) -> None:
    """Contract: the ETA spreads the jobs ahead over the model's live GPUs, and a job further
    back never gets an earlier ETA than one ahead of it: one GPU busy for about 14 s with a
    large job, one idle, six small jobs (about 1.8 s each) queued. (In the queue's own order
    they start at 0, 1.8, 3.6, ... s, all on the idle GPU.)"""
    user = await make_user(pool, "alice")
    conversation_id = str((await create_conversation(pool, actor=user.actor))["id"])
    await known_run_times(database_url, pool, user, conversation_id, "test-host")
    busy = await HandWorker(database_url, "cuda:0").start()
    idle = await HandWorker(database_url, "cuda:1").start()
    await submit(pool, user, conversation_id, "large")
    await busy.claim()
    for _ in range(6):
        await submit(pool, user, conversation_id, "small")
    etas = await queued_etas(pool, user, conversation_id)
    values = [e for _, e in etas]
    assert all(isinstance(e, float) for e in values), values
    assert values[0] == 0.0  # the idle GPU takes it now
    assert all(a <= b for a, b in itertools.pairwise(values)), values
    await busy.close()
    await idle.close()


async def test_an_eta_counts_what_another_user_served_now_will_queue_ahead(
    database_url: str, pool: db.Pool
) -> None:
    """Fair share: while alice's large job runs and four small ones of hers wait, bob's first
    small job goes ahead of them. As long as bob stays busy, his next jobs (tagged from where his
    first ends) keep going ahead of each of hers until his tags reach hers, so her job of tag S
    waits for the running job, the jobs ahead of it and bob's (S - F) GPU-seconds to come, F
    where his jobs end now; her own later jobs come after it and count nothing."""
    alice = await make_user(pool, "alice")
    bob = await make_user(pool, "bob")
    conversation_id = str((await create_conversation(pool, actor=alice.actor))["id"])
    bobs_conversation_id = str((await create_conversation(pool, actor=bob.actor))["id"])
    fit = await known_run_times(database_url, pool, alice, conversation_id, "test-host")
    worker = await HandWorker(database_url, "cuda:0").start()
    await submit(pool, alice, conversation_id, "large")
    await worker.claim()
    for _ in range(4):
        await submit(pool, alice, conversation_id, "small")
    bobs = await submit(pool, bob, bobs_conversation_id, "small")
    assert bobs["queue_position"] == 1
    (bobs_tags,) = await rows(
        pool, "SELECT finish_tag FROM jobs WHERE id = %(id)s", {"id": bobs["job_id"]}
    )
    tags = await rows(
        pool,
        "SELECT start_tag FROM jobs WHERE status = 'queued' AND conversation_id = %(c)s"
        " ORDER BY start_tag",
        {"c": conversation_id},
    )
    small = fit.run_s(work("small"))
    left = fit.run_s(work("large"))
    expected = [
        left + k * small + max(0.0, tag["start_tag"] - bobs_tags["finish_tag"])
        for k, tag in enumerate(tags, start=1)
    ]
    etas = await queued_etas(pool, alice, conversation_id)
    assert [p for p, _ in etas] == [2, 3, 4, 5]
    values = [e for _, e in etas]
    assert all(near(e, x) for e, x in zip(values, expected, strict=True)), (values, expected)
    await worker.close()


async def test_an_eta_read_after_the_gpu_takes_the_next_job_counts_that_job(
    database_url: str, pool: db.Pool
) -> None:
    """The web server shares one ETA model between reads for up to eta_ttl_s (60 s here), but
    not past a GPU taking or ending a job, which its fan-out sees in the events: once the large
    job running ahead has ended and the small one behind it has started, the last job is told
    the small one's time (about 1.8 s), not the large one's remaining time (about 14 s)."""
    alice = await make_user(pool, "alice")
    conversation_id = str((await create_conversation(pool, actor=alice.actor))["id"])
    fit = await known_run_times(database_url, pool, alice, conversation_id, "test-host")
    worker = await HandWorker(database_url, "cuda:0").start()
    async with running_app(database_url, options=WebOptions(eta_ttl_s=60.0)) as client:
        await submit(pool, alice, conversation_id, "large")
        large = await worker.claim()
        await submit(pool, alice, conversation_id, "small")
        last = await submit(pool, alice, conversation_id, "small")

        async def eta_of_last() -> float:
            response = await client.get(f"/api/jobs/{last['job_id']}", headers=alice.headers)
            assert response.status == 200
            eta = (await response.json())["eta_s"]
            assert isinstance(eta, float)
            return eta

        small = fit.run_s(work("small"))
        assert near(await eta_of_last(), fit.run_s(work("large")) + small)
        await worker.complete(large)
        await worker.claim()

        async def counts_the_small_one() -> bool:
            return near(await eta_of_last(), small)

        await eventually(counts_the_small_one, within=5.0, what="the ETA of the new running job")
    await worker.close()
