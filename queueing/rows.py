"""The typed shapes of the rows that cross the queueing boundary, each defined once.

TypedDicts, not classes: these are the objects the web serialises as they are (the job and
message JSON of the HTTP API, the event as the WebSocket sends it, the worker rows of
/api/queue and `gpuqueue status`), so typing them costs no conversion and changes no byte.
A row used only inside Python is a frozen dataclass built with `from_row` (jobs.Claim).

Shapes built in SQL as jsonb (migrations/R__api_shapes.sql: JobJson, MessageJson, EventJson)
arrive decoded from JSON, so their ids and times are strings; plain rows carry UUIDs and
datetimes as psycopg reads them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NotRequired, TypedDict
from uuid import UUID

# -- JSON built by the schema (R__api_shapes.sql) --------------------------------------------


class Transition(TypedDict):
    status: str
    at: str


class Batch(TypedDict):
    """gq_job_json's batch: the one pipeline call a job was started in with others."""

    id: str
    size: int


class JobJson(TypedDict):
    """gq_job_json: the job as the HTTP API shows it (eta_s added by positions.with_eta; the web
    turns has_image into a signed image_url)."""

    job_id: str
    message_id: str
    conversation_id: str
    model: str
    status: str
    queue_position: int
    work_ahead: NotRequired[float]  # these two are taken out by positions.with_eta
    start_tag: NotRequired[float]
    prompt: str
    params: dict[str, Any]
    priority: int
    attempts: int
    max_attempts: int
    timeout_s: int
    estimate_s: float
    cancel_requested: bool
    progress: dict[str, Any] | None
    error: str | None
    has_image: bool
    host: str | None
    device: str | None
    batch: Batch | None  # the pipeline call it was started in, when that held two or more jobs
    run_after: str | None
    created_at: str
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    updated_at: str
    transitions: list[Transition]
    eta_s: NotRequired[float | None]


class JobList(TypedDict):
    """A conversation's jobs and the seq of the one snapshot they were read in."""

    jobs: list[JobJson]
    seq: int


class MessageJson(TypedDict):
    """gq_message_json: a message as the HTTP API shows it (a queued job's position overlaid)."""

    id: str
    conversation_id: str
    role: str
    content: str
    extra_metadata: dict[str, Any]
    created_at: str
    updated_at: str


class EventJson(TypedDict):
    """gq_event_json: a transition event as the WebSocket sends it (before image signing)."""

    type: str
    seq: int
    job_id: str
    message_id: str
    conversation_id: str
    model: str
    status: str
    queue_position: int
    at: str
    error: NotRequired[Any]
    has_image: NotRequired[bool]


# -- rows --------------------------------------------------------------------------------------


class ConversationRow(TypedDict):
    id: UUID
    title: str
    created_at: datetime


class ConversationWithMessages(ConversationRow):
    messages: list[MessageJson]


class EventRow(TypedDict):
    """events_after: an event with the ids the fan-out routes it by."""

    seq: int
    job_id: UUID
    conversation_id: UUID
    event: EventJson
    # The job's owner and sort keys (queueing/queue_order.py), None once the job is gone.
    user_id: int | None
    priority: int | None
    start_tag: float | None
    queue_seq: int | None
    work: float | None


class ProgressRow(TypedDict):
    job_id: UUID
    conversation_id: UUID
    progress: dict[str, Any]
    preview: bytes | None  # PNG or JPEG, stored with this very step (else None: sent once)


class WorkerRow(TypedDict):
    """workers_live: a live worker, its GPU, its current job and how long it has held the lock."""

    worker_id: UUID
    host: str
    device: str
    backend: str
    model: str
    hostname: str
    pid: int
    started_at: datetime
    job_id: UUID | None
    lock_held_s: float | None


class ClaimFence(TypedDict):
    """The parameters that fence a worker-side write to the claim it holds (jobs.Claim.fence)."""

    job_id: UUID
    claim_id: int


class LostJob(TypedDict):
    """job_requeue_lost: a job of a dead worker and the status it went to."""

    id: UUID
    status: str


class QueueCounts(TypedDict):
    queued: int
    processing: int
    oldest_queued_s: float | None


class StatusCount(TypedDict):
    """queue_overview: the jobs of one status."""

    status: str
    jobs: int
    oldest_queued_s: float | None


class QueuedJob(TypedDict):
    """queue_head_with_users: a queued job in its model's claim order, with its owner's name."""

    model: str
    queue_position: int
    work_ahead: float
    start_tag: float
    job_id: UUID
    user_name: str
    priority: int
    attempts: int
    max_attempts: int
    prompt: str
    waiting_s: float
    retry_in_s: float


class ModelRow(TypedDict):
    """models_overview: a model a request may name (GET /api/models)."""

    name: str
    default: bool
    size_multiple: int | None  # sizes must be multiples of it; None: the queue's rule (8)
    default_steps: int | None  # what a request that leaves it out gets; None: the queue's
    default_guidance: float | None
    default_size: int | None
    workers: int
    queued: int
    processing: int


class CostSampleRow(TypedDict):
    """cost_samples: run time over work of one model's latest complete jobs on one host."""

    model: str
    host: str
    samples: int
    mean_run_s: float
    mean_work: float
    slope: float | None
    intercept: float | None
    var_work: float | None


class EtaShareRow(TypedDict):
    """eta_shares: the latest finish tag and the weight of each user a model serves now."""

    model: str
    finish_tags: list[float]
    weights: list[float]


class EtaGpuRow(TypedDict):
    """eta_gpus: a live worker's model and GPU, and the work and elapsed time of its job."""

    model: str
    host: str
    device: str
    work: float | None
    elapsed_s: float | None
