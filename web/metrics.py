"""GET /metrics: the queue, its GPUs and the live fan-out in Prometheus text format, for admins.

Two sources. The gauges of the queue (jobs queued and processing, workers, each GPU's lock) are
the database's: one statement (`metrics_snapshot`) read at most once a second and shared by
every scrape of that second, so a scrape storm costs the queue no more. The job histograms and
the outcome counter are fed by the fan-out, which routes every event of the fleet through every
web process: each process counts every job of every worker (so each replica reports the fleet's
job histograms; do not sum them across replicas), from the moment it started. The fan-out
histogram and the WebSocket gauge are this process's own sockets.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from datetime import datetime
from typing import TypedDict, cast

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from queueing import db
from queueing.cached import Cached
from queueing.rows import EventJson
from queueing.states import FINAL, JobStatus

from . import auth
from .errors import ApiError
from .keys import POOL, TOKENS
from .live import Client

WAIT_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
FANOUT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
MAX_FOLLOWED_JOBS = 200_000  # queued or running jobs whose last event time is kept
_GPU_LABELS = ("host", "device", "model")


class ModelGauges(TypedDict):
    model: str
    queued: int
    processing: int
    workers: int


class GpuGauges(TypedDict):
    host: str
    device: str
    model: str
    busy: bool
    lock_held_s: float


class Snapshot(TypedDict):
    """metrics_snapshot: per model, and per GPU (host, device) and model."""

    models: list[ModelGauges]
    gpus: list[GpuGauges]


class _QueueCollector(Collector):
    """The database's gauges, from the snapshot the scrape just read."""

    def __init__(self) -> None:
        self.snapshot: Snapshot = {"models": [], "gpus": []}

    def collect(self) -> Iterator[Metric]:
        queued = GaugeMetricFamily(
            "gpuqueue_jobs_queued", "Jobs waiting in the queue.", labels=["model"]
        )
        processing = GaugeMetricFamily(
            "gpuqueue_jobs_processing", "Jobs a worker runs now.", labels=["model"]
        )
        workers = GaugeMetricFamily(
            "gpuqueue_workers", "Live workers serving the model.", labels=["model"]
        )
        for row in self.snapshot["models"]:
            queued.add_metric([row["model"]], row["queued"])
            processing.add_metric([row["model"]], row["processing"])
            workers.add_metric([row["model"]], row["workers"])
        busy = GaugeMetricFamily(
            "gpuqueue_gpu_busy",
            "1 while a worker of the GPU runs a job, else 0.",
            labels=_GPU_LABELS,
        )
        held = GaugeMetricFamily(
            "gpuqueue_gpu_lock_held_seconds",
            "How long the GPU's lock has been held by its running job (0 while free).",
            labels=_GPU_LABELS,
        )
        for gpu in self.snapshot["gpus"]:
            labels = [gpu["host"], gpu["device"], gpu["model"]]
            busy.add_metric(labels, 1.0 if gpu["busy"] else 0.0)
            held.add_metric(labels, gpu["lock_held_s"])
        yield from (queued, processing, workers, busy, held)


class JobMetrics:
    """The job histograms and counters, fed by every event the fan-out routes (an
    EventObserver), and the fan-out histogram, fed by this process's outboxes.

    An event carries its own time but not its job's earlier ones, so the time of each queued or
    running job's last event is kept here: a processing event's wait is measured from its
    queued event, a complete event's run from its processing event. A job whose earlier event
    this process did not see (it started later) is counted but not timed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._finished = Counter(
            "gpuqueue_jobs_finished",
            "Jobs that reached a final state (complete, error, canceled).",
            ["model", "status"],
            registry=registry,
        )
        self._wait = Histogram(
            "gpuqueue_job_wait_seconds",
            "Time from queued to processing, per attempt (a retry waits again).",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self._run = Histogram(
            "gpuqueue_job_run_seconds",
            "Time from processing to complete of the jobs that completed.",
            ["model"],
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self._fanout = Histogram(
            "gpuqueue_event_fanout_seconds",
            "Time from an event's commit (its at) to the end of its last WebSocket write.",
            buckets=FANOUT_BUCKETS,
            registry=registry,
        )
        self._since: dict[str, float] = {}  # job id -> time of its last queued/processing event

    def event_routed(self, event: EventJson) -> None:
        status, job_id, model = event["status"], event["job_id"], event["model"]
        at = datetime.fromisoformat(event["at"]).timestamp()
        before = self._since.pop(job_id, None)
        if status in (JobStatus.QUEUED, JobStatus.PROCESSING):
            if status == JobStatus.PROCESSING and before is not None:
                self._wait.labels(model).observe(max(0.0, at - before))
            self._since[job_id] = at
            if len(self._since) > MAX_FOLLOWED_JOBS:
                del self._since[next(iter(self._since))]  # the longest known: its timing is lost
        elif status in FINAL:
            self._finished.labels(model, status).inc()
            if status == JobStatus.COMPLETE and before is not None:
                self._run.labels(model).observe(max(0.0, at - before))

    def event_fanned_out(self, seconds: float) -> None:
        self._fanout.observe(seconds)


class Metrics:
    """One web app's metrics, in a registry of its own (two apps in one process never share
    one)."""

    def __init__(
        self, default_model: str, clients: weakref.WeakSet[Client], ttl_s: float = 1.0
    ) -> None:
        self.registry = CollectorRegistry()
        self.jobs = JobMetrics(self.registry)
        self._queue = _QueueCollector()
        self.registry.register(self._queue)

        async def read(conn: db.Db) -> Snapshot:
            row = await db.fetch_one(conn, "metrics_snapshot", {"default_model": default_model})
            return cast("Snapshot", row)

        self._snapshot = Cached(read, ttl_s)
        sockets = Gauge(
            "gpuqueue_websocket_clients", "Open WebSockets of this process.", registry=self.registry
        )
        sockets.set_function(lambda: sum(1 for client in list(clients) if not client.closed))

    async def render(self, conn: db.Db) -> bytes:
        self._queue.snapshot = await self._snapshot.get(conn)
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


async def scrape(request: web.Request) -> web.Response:
    """GET /metrics, for admin tokens in the Authorization header (Prometheus'
    `authorization: {credentials: …}`): 401 without a valid one, 403 for a user's."""
    pool = request.app[POOL]
    actor = await auth.authenticate(request.app[TOKENS], auth.header_token(request))
    if not actor.is_admin:
        raise ApiError(403, "forbidden", "GET /metrics needs an admin token")
    body = await request.app[METRICS].render(pool)
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
    )
