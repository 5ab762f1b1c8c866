"""The job state machine: enqueue, claim, complete, fail, cancel, requeue.

Each transition is one call of a SQL function (migrations/R__queue_functions.sql), so it is
one round trip and one transaction. Worker-side transitions are fenced by the claim: a stale
claim makes them return False and write nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Protocol, cast
from uuid import UUID

from psycopg.types.json import Jsonb

from . import db
from .actors import Actor
from .config import Settings
from .errors import InvalidData, NotFound
from .eta import EtaModel
from .positions import eta_model, with_eta
from .queue_order import Place
from .rows import ClaimFence, JobJson, JobList, LostJob
from .sequencer import Sequencer
from .states import JobStatus


@dataclass(frozen=True)
class JobRequest:
    """What a user asked for; validated at the edge, and again by the schema's CHECKs."""

    prompt: str
    params: dict[str, Any]
    model: str = Settings.default_model
    priority: int = 0
    max_attempts: int = Settings.default_max_attempts
    timeout_s: int = Settings.default_timeout_s


class Placer(Protocol):
    """Where queued jobs' places come from when not counted in SQL: a web process's queue order
    (web/live/fanout.py), exact at every seq, O(log n) a job; and its sequencer, which queues
    the process's enqueues in batches (queueing/sequencer.py)."""

    sequencer: Sequencer

    def place(self, job_id: UUID) -> Place | None:
        """The job's place now, None when the order does not hold it (not queued, or not yet)."""
        ...

    async def placed(self, seq: int, job_id: UUID) -> Place | None:
        """The job's place right after event `seq` (its queued event), once the order reached it
        and the place is written back; None when that did not happen in time."""
        ...

    async def reached(self, seq: int) -> bool:
        """Wait until the order holds the state after event `seq` (or a later one)."""
        ...

    @property
    def seq(self) -> int:
        """The event the order is the state right after."""
        ...


# Reads a placer gets to catch the state it is exactly at, before the places are counted in SQL.
PLACED_READS = 3


@dataclass(frozen=True)
class Backoff:
    base_s: float = Settings.retry_base_s
    cap_s: float = Settings.retry_cap_s


@dataclass(frozen=True)
class Claim:
    """A job a worker holds: the claim_id fences every later write about it."""

    job_id: UUID
    claim_id: int
    message_id: UUID
    conversation_id: UUID
    model: str
    prompt: str
    params: dict[str, Any]
    work: float  # megapixel-steps (gq_job_work)
    timeout_s: int
    attempts: int
    max_attempts: int
    started_at: datetime
    gpu_lock: str  # the GPU lock the claim took (host/device); the job's end releases it
    batch_size: int = 1  # how many jobs the claim started in one pipeline call (contract)

    @classmethod
    def from_row(cls, row: db.Row) -> Claim:
        return cls(
            job_id=row["id"],
            claim_id=row["claim_id"],
            message_id=row["message_id"],
            conversation_id=row["conversation_id"],
            model=row["model"],
            prompt=row["prompt"],
            params=row["params"],
            work=row["work"],
            timeout_s=row["timeout_s"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            started_at=row["started_at"],
            gpu_lock=row["gpu_lock"],
            batch_size=row.get("batch_size", 1),
        )

    def fence(self) -> ClaimFence:
        return {"job_id": self.job_id, "claim_id": self.claim_id}


async def _job_with_eta(conn: db.Db, job: JobJson, eta: EtaModel | None) -> JobJson:
    if job["status"] == JobStatus.QUEUED and eta is None:
        eta = await eta_model(conn)
    return with_eta(job, eta or EtaModel())


async def enqueue(
    conn: db.Db,
    conversation_id: UUID | str,
    request: JobRequest,
    *,
    actor: Actor,
    max_queued: int,
    default_model: str = Settings.default_model,
    eta: EtaModel | None = None,
    placer: Placer | None = None,
) -> JobJson:
    """pending -> queued; creates the assistant message too. Returns the job as the API shows it.

    The model must be one a worker registered, or `default_model` (UnknownModel otherwise). The
    job's estimated cost, which places it among other users' jobs, comes from `eta`'s fits.
    Without a placer the job is queued and its position counted in the same transaction
    (under the event lock: O(jobs ahead), serialised). With one, the placer's sequencer queues
    it with every other enqueue of the process in flight (one statement, one commit), and the
    placer gives the place the job took at its queued event.
    """
    if eta is None:
        eta = await eta_model(conn)
    cost = eta.cost(request.model)
    args = {
        "conversation_id": str(conversation_id),
        "owner": actor.owner,
        "model": request.model,
        "default_model": default_model,
        "cost_intercept_s": cost.intercept_s,
        "cost_slope_s": cost.slope_s,
        "prompt": request.prompt,
        "params": request.params,
        "priority": request.priority,
        "max_attempts": request.max_attempts,
        "timeout_s": request.timeout_s,
        "max_queued": max_queued,
    }
    if placer is None:
        row = await db.fetch_one(
            conn, "job_enqueue", {**args, "params": Jsonb(request.params), "mode": "count"}
        )
        assert row is not None
        job: JobJson = row["job"]
    else:
        try:  # a batch casts every item's id before any item runs: this one must be valid
            UUID(str(conversation_id))
        except ValueError:
            raise InvalidData(f"{conversation_id!r} is not a conversation id") from None
        job = await placer.sequencer.enqueue(args)
    place = await _followed(job, placer)
    if placer is not None:  # else gq_enqueue counted the place
        if place is None:
            job_id = UUID(job["job_id"])
            place = (await _counted_places(conn, [job_id])).get(job_id, Place(0, 0.0, 0.0))
        _set_place(job, place)
    return await _job_with_eta(conn, job, eta)


async def _followed(job: JobJson, placer: Placer | None) -> Place | None:
    """Take a transition's event_seq out of its job, and with a placer wait until it has
    followed that event: the job's place then (None without a queued event, or in time)."""
    seq: int | None = job.pop("event_seq")  # type: ignore[typeddict-item]
    if placer is None or seq is None:
        return None
    return await placer.placed(seq, UUID(job["job_id"]))


def _set_place(job: JobJson, place: Place) -> None:
    job["queue_position"] = place.queue_position
    job["work_ahead"] = place.work_ahead


async def _counted_places(conn: db.Db, job_ids: list[UUID]) -> dict[UUID, Place]:
    if not job_ids:
        return {}
    rows = await db.fetch_all(conn, "queue_places", {"job_ids": job_ids})
    return {r["job_id"]: Place(r["queue_position"], r["work_ahead"], 0.0) for r in rows}


PlaceSetters = dict[UUID, Callable[[Place], None]]


async def placed_read(
    conn: db.Db,
    query: str,
    params: dict[str, Any],
    placer: Placer | None,
    queued_of: Callable[[db.Row], PlaceSetters] | None = None,
) -> db.Row | None:
    """A read (job_get, conversation_jobs, conversation_get) whose queued jobs' places are of
    the very state the read shows, the one after its `seq`: one statement that counts them
    without a placer; with one, places from the placer once it is exactly at that seq.
    `queued_of` says where each queued job of the row takes its place (default: the row's job
    JSON). The placer follows the log in pages, so it may pass the read's seq: then the read is
    made again (the placer is usually at the newest seq by then), and after PLACED_READS
    tries, or when the placer did not catch up in time, counted in SQL after all.
    A page must never mix the jobs of one state with the places of another."""
    if placer is not None:
        for _ in range(PLACED_READS):
            row = await db.fetch_one(conn, query, {**params, "count": False})
            if row is None:
                return None
            queued = (queued_of or _queued_jobs)(row)
            if not queued:
                return row
            if not await placer.reached(row["seq"]):
                break  # the order did not catch up in time: count in SQL
            if placer.seq == row["seq"]:
                places = {job_id: placer.place(job_id) for job_id in queued}
                if None not in places.values():
                    for job_id, set_place in queued.items():
                        set_place(cast(Place, places[job_id]))
                    return row
    return await db.fetch_one(conn, query, {**params, "count": True})


def _queued_jobs(row: db.Row) -> PlaceSetters:
    jobs = cast("list[JobJson]", row["jobs"]) if "jobs" in row else [row["job"]]
    return {
        UUID(job["job_id"]): partial(_set_place, job)
        for job in jobs
        if job["status"] == JobStatus.QUEUED
    }


async def get_job(
    conn: db.Db,
    job_id: UUID | str,
    *,
    actor: Actor,
    eta: EtaModel | None = None,
    placer: Placer | None = None,
) -> JobJson:
    row = await placed_read(conn, "job_get", {"job_id": job_id, "owner": actor.owner}, placer)
    if row is None:
        raise NotFound(f"job {job_id} not found")
    job: JobJson = row["job"]
    return await _job_with_eta(conn, job, eta)


async def list_jobs(
    conn: db.Db,
    conversation_id: UUID | str,
    *,
    actor: Actor,
    eta: EtaModel | None = None,
    placer: Placer | None = None,
) -> JobList:
    """A conversation's jobs in queue order, with live positions, and the seq of the state they
    show (read in one statement: since_seq=seq replays exactly what they do not show)."""
    row = await placed_read(
        conn,
        "conversation_jobs",
        {"conversation_id": conversation_id, "owner": actor.owner},
        placer,
    )
    if row is None:
        raise NotFound(f"conversation {conversation_id} not found")
    jobs: list[JobJson] = row["jobs"]
    if eta is None and any(j["status"] == JobStatus.QUEUED for j in jobs):
        eta = await eta_model(conn)
    return {"jobs": [with_eta(j, eta or EtaModel()) for j in jobs], "seq": row["seq"]}


async def visible_jobs(conn: db.Db, job_ids: Iterable[UUID], *, actor: Actor) -> dict[UUID, UUID]:
    """Those of the jobs the actor may see, each with its conversation id."""
    ids = list(job_ids)
    if not ids:
        return {}
    rows = await db.fetch_all(conn, "jobs_visible", {"job_ids": ids, "owner": actor.owner})
    return {row["job_id"]: row["conversation_id"] for row in rows}


async def job_image(conn: db.Db, job_id: UUID | str, *, actor: Actor) -> bytes:
    row = await db.fetch_one(conn, "job_image", {"job_id": job_id, "owner": actor.owner})
    if row is None:
        raise NotFound(f"job {job_id} has no image")
    return bytes(row["png"])


async def cancel(
    conn: db.Db,
    job_id: UUID | str,
    *,
    actor: Actor,
    eta: EtaModel | None = None,
    placer: Placer | None = None,
) -> JobJson:
    """queued -> canceled now; processing -> cancel requested (its worker ends it canceled).
    With a placer, answers once the placer has followed the cancel (reads after it agree)."""
    row = await db.fetch_one(conn, "job_cancel", {"job_id": job_id, "owner": actor.owner})
    assert row is not None
    job: JobJson = row["job"]
    await _followed(job, placer)
    return await _job_with_eta(conn, job, eta)


async def move_to_front(
    conn: db.Db,
    job_id: UUID | str,
    *,
    actor: Actor,
    eta: EtaModel | None = None,
    placer: Placer | None = None,
) -> JobJson:
    """A queued job takes the earliest place among its owner's queued jobs of its model (and
    priority); those shift back one place each and no other user's job moves. With a placer,
    answers once the placer has followed the move, with the place it gives."""
    row = await db.fetch_one(conn, "job_move_to_front", {"job_id": job_id, "owner": actor.owner})
    assert row is not None
    job: JobJson = row["job"]
    place = await _followed(job, placer)
    if place is not None:
        _set_place(job, place)
    return await _job_with_eta(conn, job, eta)


async def lock_and_claim(conn: db.Connection, worker_id: UUID) -> Claim | None:
    """Take the worker's GPU lock if it is free, then claim the next job (else release it).

    Never waits for the lock: None when the GPU is busy or nothing is runnable.
    """
    row = await db.fetch_one(conn, "job_lock_and_claim", {"worker_id": worker_id})
    return None if row is None else Claim.from_row(row)


async def lock_and_claim_batch(conn: db.Connection, worker_id: UUID, max_batch: int) -> list[Claim]:
    """Take the worker's GPU lock if it is free, then claim the head job of its queue and up to
    max_batch - 1 compatible ones, head first (contract: Batching). Empty when the GPU is busy
    or nothing is runnable; the lock is then not held."""
    found = await db.fetch_all(
        conn, "job_lock_and_claim_batch", {"worker_id": worker_id, "max_batch": max_batch}
    )
    return [Claim.from_row(row) for row in found]


async def release_gpu(conn: db.Connection, gpu_lock: str) -> bool:
    """Release a GPU lock by name (a claim that raised leaves it held) and wake its waiters."""
    return bool(await db.fetch_value(conn, "gpu_release", {"gpu_lock": gpu_lock}))


async def complete(
    conn: db.Db, claim: Claim, png: bytes, *, release_device: str | None = None
) -> bool:
    """processing -> complete with its image; False when the claim is stale (nothing written)."""
    row = await db.fetch_one(
        conn, "job_complete", {**claim.fence(), "png": png, "release_device": release_device}
    )
    return row is not None


async def complete_batch(
    conn: db.Db, completions: Sequence[tuple[Claim, bytes]], *, release_device: str | None = None
) -> list[bool]:
    """Each claim -> complete with its image, in one statement, each job its own transition
    (events, metadata, NOTIFY); whether each was stored (False: its claim was stale)."""
    rows = await db.fetch_all(
        conn, "job_complete_batch", completion_params(completions, release_device)
    )
    stored = {row["id"] for row in rows}
    return [claim.job_id in stored for claim, _ in completions]


def completion_params(
    completions: Sequence[tuple[Claim, bytes]], release_device: str | None
) -> dict[str, Any]:
    """The parameters of job_complete_batch."""
    return {
        "job_ids": [claim.job_id for claim, _ in completions],
        "claim_ids": [claim.claim_id for claim, _ in completions],
        "pngs": [png for _, png in completions],
        "release_device": release_device,
    }


async def fail(
    conn: db.Db,
    claim: Claim,
    error: str,
    *,
    retryable: bool,
    backoff: Backoff,
    release_device: str | None = None,
) -> str | None:
    """processing -> queued (retry) or error; the new status, or None for a stale claim."""
    row = await db.fetch_one(
        conn,
        "job_fail",
        {
            **claim.fence(),
            "error": error,
            "retryable": retryable,
            "backoff_base_s": backoff.base_s,
            "backoff_cap_s": backoff.cap_s,
            "release_device": release_device,
        },
    )
    return None if row is None else str(row["status"])


async def finish_canceled(conn: db.Db, claim: Claim, *, release_device: str | None = None) -> bool:
    row = await db.fetch_one(
        conn, "job_finish_canceled", {**claim.fence(), "release_device": release_device}
    )
    return row is not None


async def requeue(conn: db.Db, claim: Claim, *, release_device: str | None = None) -> str | None:
    """Hand a running job back (graceful stop): it keeps its place, the attempt not counted."""
    row = await db.fetch_one(
        conn, "job_requeue", {**claim.fence(), "release_device": release_device}
    )
    return None if row is None else str(row["status"])


async def requeue_lost(conn: db.Db) -> list[LostJob]:
    """Crash recovery: jobs of dead worker sessions go back to the queue (or end). Safe to race."""
    return cast("list[LostJob]", await db.fetch_all(conn, "job_requeue_lost"))


async def report_progress(
    conn: db.Db, claim: Claim, step: int, steps: int, preview: bytes | None = None
) -> bool | None:
    """Store step i of n (and the preview of that step, if any); returns whether a cancel was
    requested, None when the claim is stale."""
    params = {**claim.fence(), "step": step, "steps": steps}
    if preview is None:
        row = await db.fetch_one(conn, "job_progress", params)
    else:
        row = await db.fetch_one(conn, "job_progress_with_preview", {**params, "image": preview})
    return None if row is None or row["cancel_requested"] is None else bool(row["cancel_requested"])


async def claim_state(conn: db.Db, claim: Claim) -> tuple[bool, bool]:
    """(claim still current, cancel requested)."""
    row = await db.fetch_one(conn, "job_claim_state", claim.fence())
    if row is None:
        return False, False
    return bool(row["current"]), bool(row["cancel_requested"])
