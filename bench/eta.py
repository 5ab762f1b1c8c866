"""ETA accuracy on a mixed workload: the eta_s a job is given when it is queued, against when it
really started, beside a Gradio-style estimate rebuilt for the same jobs.

The workload: two models, `a` and `b`, each served by one real worker process
(`gpuqueue worker --backend stub --model a|b`, one worker per model, so two in all), whose stub
sleeps GPUQUEUE_STUB_DELAY plus GPUQUEUE_STUB_DELAY_PER_WORK_S per megapixel-step (steps x
width x height / 1e6): b's GPU is the slower one. Three sizes, drawn at random. Four users
(weight 1) take turns submitting through the HTTP API (`gpuqueue web`), at a steady pace per
model set to LOAD times what its worker gets through (from the warm-up's run times), so each
model's queue builds during the run. Before it, a warm-up of every size on each model gives the
cost model its first samples, as a deployment's first jobs would.

Ours: the eta_s of the POST's answer (the web server's ETA, its model cached for up to a second,
as for every request). Predicted wait = eta_s, actual wait = started_at - queued_at, both on the
database's clock. Baseline, Gradio's queue (gradio/queueing.py, broadcast_estimations): an
event of rank r (0-based) is told `r x avg / concurrency_limit + time_till_available_worker`
before its own run time, where avg is the function's mean run time and time_till_available_worker
is, when every slot is busy, the soonest `start + avg` of the running events less now (else 0).
Gradio's avg is the mean of every run so far; the issue's baseline is the mean of the last
RECENT run times, which is the figure's (the all-runs mean is in the note). Both are computed
from the database after the run, for each job at its own queued_at: the jobs of its model
finished by then, those running then, and its real rank (queue_position - 1), so the baseline is
given our exact position and only its time per job differs. Errors are |predicted - actual| /
actual over the jobs that waited at least MIN_WAIT_S (shorter waits make any relative error
meaningless; how many were left out is in the note).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp

from bench import env
from bench.env import BenchDb, Context, User
from bench.report import Figure, at_most, ratio_at_most
from bench.stats import percentile

FAMILY = "eta"
# Each model's stub worker: seconds per megapixel-step; every job also sleeps STUB_DELAY_S.
MODELS = {"a": 0.05, "b": 0.08}
STUB_DELAY_S = 0.02
# Three sizes: (side, steps) -> 0.66, 5.2 and 14.7 megapixel-steps.
SIZES = {"small": (256, 10), "medium": (512, 20), "large": (768, 25)}
USERS = 4
LOAD = 1.3  # arrivals per model / what its worker runs: the queue grows by 0.3 jobs per job run
WARM_PER_SIZE = 3  # warm-up jobs per size and model
MIN_WAIT_S = 1.0
RECENT = 20  # the baseline's window: the mean of the last RECENT run times of the model
WEB_ENV = {"GPUQUEUE_MAX_QUEUED_PER_USER": "100000"}
BASELINE = f"Gradio-style: rank x mean of last {RECENT} run times"


@dataclass(frozen=True)
class Submitted:
    """A measured job as its POST answered: what it was told when it was queued."""

    job_id: UUID
    model: str
    size: str
    user: int
    queue_position: int
    eta_s: float | None


@dataclass(frozen=True)
class Asked:
    """A measured job re-read while it waited (GET /api/jobs/{id}): its position and eta_s then.
    `at_s`: when the request was sent, epoch seconds (the database runs on this machine, so its
    clock is this clock)."""

    job_id: UUID
    at_s: float
    queue_position: int
    eta_s: float | None


@dataclass(frozen=True)
class Ran:
    """A job of the run as the database has it (epoch seconds, the database's clock)."""

    job_id: UUID
    model: str
    queued_s: float
    started_s: float | None
    finished_s: float | None


def gradio_wait(
    model: str,
    queue_position: int,
    now: float,
    history: Sequence[Ran],
    *,
    workers: int,
    recent: int | None,
) -> float | None:
    """Gradio's predicted wait, at `now`, of a job of `model` at `queue_position` (its rank_eta
    less its own run time): rank x avg / workers + time_till_available_worker; None before any
    job of the model ended. `recent`: the window of run times avg is the mean of (None: every
    run so far, as Gradio does)."""
    done = sorted(
        (r for r in history if r.model == model and r.finished_s is not None),
        key=lambda r: r.finished_s or 0.0,
    )
    runs = [
        (r.finished_s or 0.0) - (r.started_s or 0.0)
        for r in done
        if (r.finished_s or 0.0) <= now and r.started_s is not None
    ]
    if recent is not None:
        runs = runs[-recent:]
    if not runs:
        return None
    avg = statistics.fmean(runs)
    running = [
        r
        for r in history
        if r.model == model
        and r.started_s is not None
        and r.started_s <= now
        and (r.finished_s is None or r.finished_s > now)
    ]
    till = 0.0
    if len(running) >= workers:
        till = max(min((r.started_s or 0.0) + avg for r in running) - now, 0.0)
    return till + (queue_position - 1) * avg / workers


async def _post(
    session: aiohttp.ClientSession,
    base: str,
    user: User,
    model: str,
    size: str,
    prompt: str,
    seed: int,
) -> dict[str, Any]:
    side, steps = SIZES[size]
    body = {
        "prompt": prompt,
        "model": model,
        "width": side,
        "height": side,
        "steps": steps,
        "seed": seed,
    }
    url = f"{base}/api/conversations/{user.conversation_id}/images"
    headers = {"Authorization": f"Bearer {user.token}"}
    async with session.post(url, json=body, headers=headers) as response:
        if response.status != 202:
            raise RuntimeError(
                f"POST images answered {response.status}: {(await response.text())[:300]}"
            )
        answer: dict[str, Any] = await response.json()
        return answer


def _schedule(
    mean_run_s: dict[str, float], seconds: float, rng: random.Random
) -> list[tuple[float, str, str, int]]:
    """(offset s, model, size, user) per submission, in time order: per model one arrival every
    mean_run / LOAD seconds, its users taking turns, each job's size drawn at random."""
    plan: list[tuple[float, str, str, int]] = []
    for model, mean_s in mean_run_s.items():
        interval = mean_s / LOAD
        k = 0
        while k * interval < seconds:
            plan.append((k * interval, model, rng.choice(list(SIZES)), k % USERS))
            k += 1
    return sorted(plan)


async def _submit(
    base: str, users: Sequence[User], plan: Sequence[tuple[float, str, str, int]]
) -> tuple[list[Submitted], list[Asked]]:
    """Each POST at its time (as its own task, so a slow answer delays no other); then, halfway
    through the wait it was told, the job is asked for again, as a page that follows it would
    show its ETA then (not asked once it has started, or when it was told under 2 s)."""
    submitted: list[Submitted] = []
    asked: list[Asked] = []
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()

        async def one(i: int, at: float, model: str, size: str, user: int) -> None:
            await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
            job = await _post(session, base, users[user], model, size, "eta-run", i)
            eta_s = job["eta_s"]
            submitted.append(
                Submitted(UUID(job["job_id"]), model, size, user, int(job["queue_position"]), eta_s)
            )
            if eta_s is None or eta_s < 2 * MIN_WAIT_S:
                return
            await asyncio.sleep(eta_s / 2)
            at_s = time.time()
            headers = {"Authorization": f"Bearer {users[user].token}"}
            async with session.get(f"{base}/api/jobs/{job['job_id']}", headers=headers) as got:
                again: dict[str, Any] = await got.json()
            if again["status"] == "queued":
                asked.append(
                    Asked(UUID(job["job_id"]), at_s, int(again["queue_position"]), again["eta_s"])
                )

        await asyncio.gather(*(one(i, *step) for i, step in enumerate(plan)))
    return submitted, asked


async def _history(bdb: BenchDb) -> dict[UUID, Ran]:
    conn = await bdb.connect()
    try:
        rows = await env.fetch(conn, "eta_history", {"models": list(MODELS)})
    finally:
        await conn.close()
    failed = [r for r in rows if r["status"] != "complete" or r["attempts"] != 1]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not complete at the first attempt")
    return {
        r["job_id"]: Ran(r["job_id"], r["model"], r["queued_s"], r["started_s"], r["finished_s"])
        for r in rows
    }


async def run(ctx: Context) -> list[Figure]:
    seconds = 15.0 if ctx.quick else 40.0
    rng = random.Random(12)
    async with ctx.database(FAMILY) as bdb:
        conn = await bdb.connect()
        try:
            users = [await bdb.new_user(conn, f"eta-{i}") for i in range(USERS)]
        finally:
            await conn.close()
        started_workers = await asyncio.gather(
            *(
                env.start_worker(
                    ctx,
                    bdb,
                    device=f"stub-{model}",
                    backend="stub",
                    env={
                        "GPUQUEUE_MODEL": model,
                        "GPUQUEUE_STUB_DELAY": str(STUB_DELAY_S),
                        "GPUQUEUE_STUB_DELAY_PER_WORK_S": str(per_work),
                    },
                )
                for model, per_work in MODELS.items()
            ),
            return_exceptions=True,
        )
        workers = [w for w in started_workers if not isinstance(w, BaseException)]
        try:
            for w in started_workers:
                if isinstance(w, BaseException):
                    raise w
            web = await env.start_web(ctx, bdb, env=WEB_ENV)
            async with web:
                async with aiohttp.ClientSession() as session:
                    warm = [
                        (model, size)
                        for _ in range(WARM_PER_SIZE)
                        for size in SIZES
                        for model in MODELS
                    ]
                    for i, (model, size) in enumerate(warm):
                        await _post(
                            session, web.base_url, users[i % USERS], model, size, "eta-warm", i
                        )
                await env.wait_batch(bdb, "eta-warm", len(warm), limit_s=120)
                conn = await bdb.connect()
                try:
                    mean_rows = await env.fetch(conn, "eta_mean_run", {"prompt": "eta-warm"})
                finally:
                    await conn.close()
                mean_run_s = {r["model"]: float(r["mean_run_s"]) for r in mean_rows}
                plan = _schedule(mean_run_s, seconds, rng)
                env.log(
                    f"eta: {len(plan)} jobs over {seconds:g} s "
                    f"(mean run {', '.join(f'{m} {s:.2f} s' for m, s in mean_run_s.items())})"
                )
                submitted, asked = await _submit(web.base_url, users, plan)
                await env.wait_batch(bdb, "eta-run", len(plan), limit_s=300)
                web.check_alive()
            for w in workers:
                w.check_alive()
        finally:
            for w in workers:
                await w.stop()
        history = await _history(bdb)
    return _figures(submitted, asked, history, mean_run_s, seconds)


def _errors(pairs: Sequence[tuple[float, float]]) -> list[float]:
    return [abs(predicted - actual) / actual for predicted, actual in pairs]


def _pct(values: Sequence[float], q: float) -> float:
    return 100.0 * percentile(values, q) if values else float("nan")


@dataclass
class Predictions:
    """(predicted wait, actual wait) pairs of ours and of the baselines, over the same jobs."""

    ours: list[tuple[float, float]]
    recent: list[tuple[float, float]]
    every: list[tuple[float, float]]
    short: int = 0
    unknown: int = 0

    def add(
        self,
        model: str,
        position: int,
        eta_s: float | None,
        now: float,
        actual: float,
        runs: Sequence[Ran],
    ) -> bool:
        """One prediction made at `now`; False when it is left out (a short wait, no ETA)."""
        if actual < MIN_WAIT_S:
            self.short += 1
            return False
        recent = gradio_wait(model, position, now, runs, workers=1, recent=RECENT)
        every = gradio_wait(model, position, now, runs, workers=1, recent=None)
        if eta_s is None or recent is None or every is None:
            self.unknown += 1
            return False
        self.ours.append((eta_s, actual))
        self.recent.append((recent, actual))
        self.every.append((every, actual))
        return True

    def left_out(self) -> str:
        text = f"{self.short} that waited < {MIN_WAIT_S:g} s left out"
        if self.unknown:
            text += f", {self.unknown} with NO eta_s (or no baseline yet)"
        return text


def _figures(
    submitted: Sequence[Submitted],
    asked: Sequence[Asked],
    history: dict[UUID, Ran],
    mean_run_s: dict[str, float],
    seconds: float,
) -> list[Figure]:
    runs = list(history.values())
    at_submit = Predictions([], [], [])
    by_model: dict[str, list[tuple[float, float]]] = {m: [] for m in MODELS}
    overtaken: list[bool] = []
    for job in submitted:
        ran = history[job.job_id]
        assert ran.started_s is not None
        actual = ran.started_s - ran.queued_s
        if at_submit.add(job.model, job.queue_position, job.eta_s, ran.queued_s, actual, runs):
            by_model[job.model].append(at_submit.ours[-1])
            # Fair share: a job queued later, by a user whose jobs so far cost less, may start
            # first; no ETA made at submit can know of it.
            overtaken.append(
                any(
                    r.model == job.model
                    and r.queued_s > ran.queued_s
                    and (r.started_s or 0.0) < ran.started_s
                    for r in runs
                )
            )
    later = Predictions([], [], [])
    for again in asked:
        ran = history[again.job_id]
        assert ran.started_s is not None
        model = ran.model
        later.add(
            model, again.queue_position, again.eta_s, again.at_s, ran.started_s - again.at_s, runs
        )
    errors, baseline = _errors(at_submit.ours), _errors(at_submit.recent)
    gradio_all = _errors(at_submit.every)
    bias = [(p - a) / a for p, a in at_submit.ours]
    waits = [a for _, a in at_submit.ours]
    clean = [e for e, o in zip(errors, overtaken, strict=True) if not o]
    at = (
        f"{len(submitted)} jobs in {seconds:g} s, {len(MODELS)} models x 1 worker, "
        f"{len(SIZES)} sizes, {USERS} users"
    )
    per_model = "; ".join(
        f"model {m} (mean run {mean_run_s.get(m, 0):.2f} s): median {_pct(_errors(p), 50):.1f} %"
        f" over {len(p)}"
        for m, p in by_model.items()
    )
    wait_range = (
        f"waits {min(waits):.1f}-{max(waits):.1f} s (median {statistics.median(waits):.1f})"
        if waits
        else "no waits"
    )
    note = (
        f"{len(errors)} jobs ({at_submit.left_out()}); {wait_range}; ours: eta_s of the POST "
        f"answer vs started_at - queued_at; median signed error {_pct(bias, 50):+.1f} % "
        f"(negative: started later than told); {sum(overtaken)} of them were overtaken by a "
        f"job queued after them (fair share), the other {len(clean)}: median "
        f"{_pct(clean, 50):.1f} %; {per_model}; Gradio's own all-runs mean: median "
        f"{_pct(gradio_all, 50):.1f} %, p90 {_pct(gradio_all, 90):.1f} %"
    )
    later_errors, later_baseline = _errors(later.ours), _errors(later.recent)
    return [
        Figure(
            FAMILY,
            "ETA error at submit, median",
            at,
            "%",
            _pct(errors, 50),
            _pct(baseline, 50),
            BASELINE,
            (at_most(15.0, "%"), ratio_at_most(0.5)),
            note,
        ),
        Figure(
            FAMILY,
            "ETA error at submit, p90",
            at,
            "%",
            _pct(errors, 90),
            _pct(baseline, 90),
            BASELINE,
            (),
            f"the same {len(errors)} jobs",
        ),
        Figure(
            FAMILY,
            "ETA error halfway through the wait, median",
            at,
            "%",
            _pct(later_errors, 50),
            _pct(later_baseline, 50),
            BASELINE,
            (),
            f"{len(later_errors)} jobs re-read with GET /api/jobs/{{id}} when half the wait they "
            f"were told had passed ({later.left_out()}); predicted: its eta_s then, actual: "
            f"started_at - the GET's time; the baseline at that time with that position. p90 "
            f"ours {_pct(later_errors, 90):.1f} %, baseline {_pct(later_baseline, 90):.1f} %",
        ),
    ]
