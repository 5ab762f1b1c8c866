"""A host that vanishes without a word (issue 10, item 2): power lost, network cut.

Nothing closes the worker's connections: its process is frozen (SIGSTOP) and every packet
between its sockets and PostgreSQL is dropped (nft), so neither end hears a FIN or a RST. The
server must give up on the worker's sessions by its own keepalives and tcp_user_timeout, the
sweep of another worker must then take the job back, and that worker must run it: within 30 s.
When the frozen worker wakes up with its network still gone, its probe's deadline tells it its
session is lost: it stops the job and writes nothing.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable

import psycopg
import pytest

from harness.commands import WorkerChild
from harness.waiting import eventually
from queueing import db
from queueing.actors import Actor
from tests.integration.worker_support import (
    InProcessWorker,
    job,
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    start_worker_fixture,  # noqa: F401  (the start_worker fixture)
    submit,
    wait_status,
)
from tests.reliability.netcut import dropped_tcp, nft_unavailable, tcp_ports_to

pytestmark = pytest.mark.slow

SpawnWorker = Callable[..., WorkerChild]
BOUND_S = 30.0
PROBE_TIMEOUT_S = 5.0  # JobRunner's default


def _server_port(database_url: str) -> int:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    host = str(info.get("host") or "")
    if not host or host.startswith("/"):
        pytest.skip(f"the test server is not reached over TCP (host {host!r})")
    return int(info.get("port") or 5432)


async def test_a_silently_vanished_worker_is_noticed_and_its_job_rerun_within_30_s(
    pool: db.Pool, database_url: str, conversation_id: str, alice: Actor,
    spawn_worker: SpawnWorker,
) -> None:  # fmt: skip
    """Contract (Hosts and GPU locks): a worker whose host vanishes without closing its
    connections is noticed within 30 s; its job goes back to the queue, the attempt counted, and
    another worker runs it; its GPU lock is freed. The worker itself never writes a result."""
    unavailable = nft_unavailable()
    if unavailable is not None:
        pytest.skip(f"cannot cut a process's traffic: {unavailable}")
    server_port = _server_port(database_url)
    # 120 s over 400 steps: one step every 0.3 s, so the job runs long and stops promptly.
    doomed = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="120")
    lost = await doomed.registered(pool)
    job_id = await submit(pool, conversation_id, alice, "long", max_attempts=3, timeout_s=600,
                          steps=400)  # fmt: skip
    await wait_status(pool, job_id, "processing")
    # The other worker runs with the product's default poll and sweep intervals.
    other = spawn_worker("cuda:1", GPUQUEUE_STUB_DELAY="0.2", GPUQUEUE_POLL_INTERVAL_S="1.0",
                         GPUQUEUE_SWEEP_INTERVAL_S="1.0")  # fmt: skip
    rescuer = await other.registered(pool)

    doomed.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    ports = tcp_ports_to(doomed.pid, server_port)  # a stopped process opens no new connection
    with dropped_tcp(ports, server_port):
        sessions = await rows(
            pool,
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%(ports)s)",
            {"ports": sorted(ports)},
        )
        session_pids = {r["pid"] for r in sessions}
        assert lost["session_pid"] in session_pids, (ports, sessions)

        async def rerun() -> bool:
            found = await rows(pool, "SELECT worker_id FROM jobs WHERE id = %(id)s AND status"
                               " IN ('processing', 'complete')", {"id": job_id})  # fmt: skip
            return bool(found) and found[0]["worker_id"] == rescuer["id"]

        await eventually(rerun, within=BOUND_S + 5, interval=0.05)
        noticed_s = time.monotonic() - frozen_at
        print(f"host loss: frozen at 0 s, job claimed by the other worker at {noticed_s:.1f} s")
        assert noticed_s < BOUND_S

        # Its other sessions (LISTEN, sweeper) are idle, so each is given up by its own
        # keepalive timer, a moment apart from the one whose lock the rerun needed: all within
        # the same bound.
        async def sessions_gone() -> bool:
            left = await rows(pool, "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%(pids)s)",
                              {"pids": sorted(session_pids)})  # fmt: skip
            return left == []

        await eventually(
            sessions_gone,
            within=BOUND_S - noticed_s,
            interval=0.05,
            what="the server dropping every session of the vanished worker",
        )
        locks = await rows(pool, "SELECT pid FROM pg_locks WHERE pid = %(pid)s",
                           {"pid": lost["session_pid"]})  # fmt: skip
        assert locks == []

        # The frozen worker wakes up, its network still gone: no probe answers, so it takes its
        # session as lost and stops the job without writing anything.
        doomed.signal(signal.SIGCONT)

        async def gave_up() -> bool:
            return "lost its session" in doomed.log()

        await eventually(gave_up, within=20, interval=0.1)

    done = await wait_status(pool, job_id, "complete", within=30)
    assert done["worker_id"] == rescuer["id"]
    assert done["attempts"] == 2
    seen = await job(pool, job_id)
    assert [t["status"] for t in seen["transitions"]] == [
        "pending",
        "queued",
        "processing",
        "queued",
        "processing",
        "complete",
    ]
    assert f"job {job_id}: complete" not in doomed.log()


async def test_a_probe_without_an_answer_means_the_session_is_lost(
    pool: db.Pool, database_url: str, conversation_id: str, alice: Actor,
    start_worker: Callable[..., InProcessWorker], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Item 2, the worker's side: a probe that never answers (here it waits behind a lock on the
    jobs table; a cut network looks the same) ends the run as a lost session within the probe's
    deadline: the pipeline stops, nothing is written, and the worker comes back as a new one."""
    caplog.set_level(logging.WARNING)
    worker = start_worker("cuda:0", delay=60.0)
    job_id = await submit(pool, conversation_id, alice, "long", max_attempts=3, steps=600)
    first = await wait_status(pool, job_id, "processing")
    connecting = psycopg.AsyncConnection.connect(database_url)
    async with await connecting as blocker, blocker.transaction():
        await blocker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        locked_at = time.monotonic()

        async def gave_up() -> bool:
            return "lost its session" in caplog.text

        await eventually(gave_up, within=20, interval=0.05)
        assert time.monotonic() - locked_at < PROBE_TIMEOUT_S + 2
        assert "did not answer a probe" in caplog.text

    async def rerun() -> db.Row | None:
        found = await rows(pool, "SELECT * FROM jobs WHERE id = %(id)s", {"id": job_id})
        again = found[0]["status"] == "processing" and found[0]["worker_id"] != first["worker_id"]
        return found[0] if again else None

    second = await eventually(rerun, within=10)
    assert second is not None and second["attempts"] == 2
    assert str(second["worker_id"]) == worker.worker.worker_id
