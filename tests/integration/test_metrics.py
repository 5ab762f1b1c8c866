"""GET /metrics (issue 15, item 1; contract: Operations): a real `gpuqueue web` process and a real
stub `gpuqueue worker`, scraped and parsed with prometheus_client's own parser; the Grafana
dashboard's queries, and the fan-out histogram's timing rule, checked without processes."""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.commands import WebChild, WorkerChild
from harness.processes import REPO
from harness.waiting import eventually
from queueing import db
from queueing.rows import EventJson
from tests.integration.web_support import User, frames_until, make_user, subscribe
from tests.integration.worker_support import spawn_worker_fixture  # noqa: F401  (spawn_worker)
from web.live.stats import Deliveries
from web.metrics import Metrics

DASHBOARD = REPO / "deploy" / "grafana" / "gpuqueue.json"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def web_process(database_url: str, tmp_path: Path) -> AsyncIterator[WebChild]:
    web = WebChild(database_url, tmp_path / "web.log", env={"GPUQUEUE_POLL_INTERVAL_S": "0.2"})
    try:
        await web.ready()
        yield web
    finally:
        await web.kill()  # its shutdown is not what these tests check


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def scrape(session: aiohttp.ClientSession, web: WebChild, user: User) -> Samples:
    async with session.get(f"{web.base_url}/metrics", headers=user.headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scraped_until(
    session: aiohttp.ClientSession,
    web: WebChild,
    user: User,
    done: Callable[[Samples], bool],
    what: str,
) -> Samples:
    """Scrape until `done` holds (the database's gauges are at most a second old)."""

    async def probe() -> Samples | None:
        samples = await scrape(session, web, user)
        return samples if done(samples) else None

    found = await eventually(probe, within=15.0, interval=0.1, what=what)
    assert found is not None
    return found


async def test_metrics_refuse_missing_and_non_admin_tokens(
    pool: db.Pool, web_process: WebChild, session: aiohttp.ClientSession
) -> None:
    """401 without a token (also one in the URL), 403 for a user's token: the API's error shape."""
    bob = await make_user(pool, "bob")
    url = f"{web_process.base_url}/metrics"
    for headers, query, status, code in (
        ({}, "", 401, "unauthorized"),
        ({}, f"?token={bob.token}", 401, "unauthorized"),
        ({"Authorization": "Bearer not-a-token"}, "", 401, "unauthorized"),
        (bob.headers, "", 403, "forbidden"),
    ):
        async with session.get(url + query, headers=headers) as response:
            assert response.status == status
            body = await response.json()
        assert body["error"]["code"] == code, body


async def test_metrics_move_as_a_job_is_queued_run_and_followed(
    pool: db.Pool,
    web_process: WebChild,
    session: aiohttp.ClientSession,
    spawn_worker: Callable[..., WorkerChild],
) -> None:
    """Queued rises on enqueue; an open WebSocket is counted; while the job runs its GPU is busy;
    once it completes, the outcome counter, the wait and run histograms and the fan-out
    histogram (the socket got its events) have moved; a closed socket is no longer counted."""
    admin = await make_user(pool, "root", admin=True)
    web = web_process
    before = await scrape(session, web, admin)
    assert value(before, "gpuqueue_jobs_queued", model="tiny") == 0
    assert value(before, "gpuqueue_workers", model="tiny") == 0
    assert value(before, "gpuqueue_websocket_clients") == 0
    assert value(before, "gpuqueue_job_run_seconds_count", model="tiny") is None

    async with session.post(
        f"{web.base_url}/api/conversations", json={"title": "metrics"}, headers=admin.headers
    ) as response:
        conversation_id = (await response.json())["id"]
    async with session.post(
        f"{web.base_url}/api/conversations/{conversation_id}/images",
        json={"prompt": "a red fox", "width": 64, "height": 64, "steps": 2},
        headers=admin.headers,
    ) as response:
        assert response.status == 202, await response.text()
        job_id = (await response.json())["job_id"]
    await scraped_until(
        session,
        web,
        admin,
        lambda s: value(s, "gpuqueue_jobs_queued", model="tiny") == 1,
        "queued{tiny} = 1",
    )

    async with session.ws_connect(f"{web.base_url}/ws?token={admin.token}") as ws:
        await subscribe(ws, conversation_id=conversation_id)
        await scraped_until(
            session, web, admin, lambda s: value(s, "gpuqueue_websocket_clients") == 1, "1 socket"
        )
        worker = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="3", GPUQUEUE_HOST_ID="metrics-host")
        running = await scraped_until(
            session,
            web,
            admin,
            lambda s: value(s, "gpuqueue_jobs_processing", model="tiny") == 1,
            "processing{tiny} = 1",
        )
        gpu = {"host": "metrics-host", "device": "cuda:0", "model": "tiny"}
        assert value(running, "gpuqueue_workers", model="tiny") == 1
        assert value(running, "gpuqueue_gpu_busy", **gpu) == 1
        held = value(running, "gpuqueue_gpu_lock_held_seconds", **gpu)
        assert held is not None and 0 <= held < 10
        await frames_until(
            ws, lambda f: f.get("job_id") == job_id and f.get("status") == "complete"
        )
        done = await scraped_until(
            session,
            web,
            admin,
            lambda s: (
                (value(s, "gpuqueue_event_fanout_seconds_count") or 0) >= 2
                and value(s, "gpuqueue_jobs_queued", model="tiny") == 0
            ),
            "the socket's processing and complete events timed, the queue empty",
        )
    run_s = value(done, "gpuqueue_job_run_seconds_sum", model="tiny")
    assert value(done, "gpuqueue_jobs_finished_total", model="tiny", status="complete") == 1
    assert value(done, "gpuqueue_job_run_seconds_count", model="tiny") == 1
    assert run_s is not None and 3 <= run_s < 30
    assert value(done, "gpuqueue_job_wait_seconds_count", model="tiny") == 1
    assert value(done, "gpuqueue_jobs_processing", model="tiny") == 0
    fanout_s = value(done, "gpuqueue_event_fanout_seconds_sum")
    assert fanout_s is not None and 0 <= fanout_s < 10
    await scraped_until(
        session, web, admin, lambda s: value(s, "gpuqueue_websocket_clients") == 0, "no socket"
    )
    assert worker.alive()


def test_dashboard_charts_only_metrics_the_server_exports() -> None:
    """deploy/grafana/gpuqueue.json: a dashboard with a Prometheus datasource variable, whose
    every panel queries through it, and names only series /metrics exports."""
    dashboard = json.loads(DASHBOARD.read_text())
    exported = {
        family.name + suffix
        for family in Metrics("tiny", weakref.WeakSet()).registry.collect()
        for suffix in _SUFFIXES[family.type]
    }
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    charted: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            charted.update(re.findall(r"gpuqueue_[a-z_]+", target["expr"]))
    assert charted <= exported, charted - exported
    assert {"gpuqueue_jobs_queued", "gpuqueue_job_wait_seconds_bucket",
            "gpuqueue_job_run_seconds_bucket", "gpuqueue_jobs_finished_total",
            "gpuqueue_gpu_lock_held_seconds", "gpuqueue_event_fanout_seconds_bucket",
            "gpuqueue_websocket_clients"} <= charted  # fmt: skip


class _Recorder:
    """An EventObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.routed: list[str] = []
        self.fanned_out: list[float] = []

    def event_routed(self, event: EventJson) -> None:
        self.routed.append(event["job_id"])

    def event_fanned_out(self, seconds: float) -> None:
        self.fanned_out.append(seconds)


def test_fanout_time_is_taken_when_the_last_socket_lets_go_of_the_event() -> None:
    """The fan-out histogram's rule: one observation per event, once every socket it was offered
    to has written it (or dropped it with its socket), never while it is still being offered;
    an event no socket took is routed but not timed."""
    deliveries, recorder = Deliveries(), _Recorder()
    deliveries.observer = recorder
    at = datetime.now(UTC)
    event = cast("EventJson", {"job_id": "j1", "at": at.isoformat()})
    text = "".join(["{", '"seq": 1', "}"])  # an object of its own, as each event's text is
    deliveries.routing(text, event["at"])
    deliveries.offered(text)
    deliveries.offered(text)
    deliveries.offered("another text")
    deliveries.done(text)
    deliveries.done(text)
    assert recorder.fanned_out == []  # still being offered
    deliveries.routed(event)
    assert len(recorder.fanned_out) == 1
    assert 0 <= recorder.fanned_out[0] < (datetime.now(UTC) - at).total_seconds() + 0.01

    later = "".join(["{", '"seq": 2', "}"])
    deliveries.routing(later, event["at"])
    deliveries.offered(later)
    deliveries.offered(later)
    deliveries.routed(event)
    deliveries.done(later)
    assert len(recorder.fanned_out) == 1  # one socket still has it
    deliveries.done(later)
    deliveries.done(later)  # an outbox letting go of it again changes nothing
    assert len(recorder.fanned_out) == 2

    unfollowed = "".join(["{", '"seq": 3', "}"])
    deliveries.routing(unfollowed, event["at"])
    deliveries.routed(event)
    assert len(recorder.fanned_out) == 2
    assert recorder.routed == ["j1", "j1", "j1"]
