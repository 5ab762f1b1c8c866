"""A GPU is its host and its device (issue 10, items 1, 3, 9 and 14; contract: Hosts and GPU
locks). Real `gpuqueue worker` processes with the stub backend; other hosts are made with
`unshare --uts` (a process of its own hostname) or `--host-id`."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.commands import WorkerChild
from harness.waiting import eventually
from queueing import db, jobs
from queueing.actors import Actor
from tests.integration.worker_support import (
    InProcessWorker,
    gpu_locks,
    live_workers,
    rows,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    start_worker_fixture,  # noqa: F401  (the start_worker fixture)
    submit,
    submit_many,
    wait_all_final,
    wait_status,
)

SpawnWorker = Callable[..., WorkerChild]
StartWorker = Callable[..., InProcessWorker]
ADMIN = Actor(0, "admin", is_admin=True)

needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="unshare --uts needs root (or a user namespace)",
)


def on_host(hostname: str) -> tuple[str, ...]:
    """A command prefix that runs the worker under its own hostname (a new UTS namespace)."""
    return ("unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname)


async def _intervals(pool: db.Pool) -> list[db.Row]:
    return await rows(
        pool,
        "SELECT j.id, w.hostname, w.pid, j.started_at, j.finished_at FROM jobs AS j"
        " JOIN workers AS w ON w.id = j.worker_id WHERE j.status = 'complete'"
        " ORDER BY j.started_at",
    )


def _overlap(x: db.Row, y: db.Row) -> bool:
    return bool(x["started_at"] < y["finished_at"] and y["started_at"] < x["finished_at"])


@needs_unshare
async def test_the_same_device_on_two_hosts_runs_in_parallel(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Item 1: two workers with `--device cuda:0` under two hostnames (unshare --uts) hold two
    GPU locks: their jobs overlap in time. Jobs and workers record the host."""
    a = spawn_worker("cuda:0", prefix=on_host("gpu-a"), GPUQUEUE_STUB_DELAY="0.5")
    b = spawn_worker("cuda:0", prefix=on_host("gpu-b"), GPUQUEUE_STUB_DELAY="0.5")
    await a.registered(pool)
    await b.registered(pool)
    ids = await submit_many(pool, conversation_id, alice, 6)
    await wait_all_final(pool, ids, within=30)
    done = await _intervals(pool)
    assert len(done) == 6
    on_a = [r for r in done if r["hostname"] == "gpu-a"]
    on_b = [r for r in done if r["hostname"] == "gpu-b"]
    assert any(_overlap(x, y) for x in on_a for y in on_b), done
    hosts = {w["pid"]: (w["host"], w["device"]) for w in await live_workers(pool)}
    assert hosts == {a.pid: ("gpu-a", "cuda:0"), b.pid: ("gpu-b", "cuda:0")}
    recorded = await rows(
        pool,
        "SELECT j.host, j.device, w.pid FROM jobs AS j JOIN workers AS w ON w.id = j.worker_id",
    )
    assert all((r["host"], r["device"]) == hosts[r["pid"]] for r in recorded)


@needs_unshare
async def test_two_workers_of_one_host_never_overlap_whatever_their_lock_files(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Item 1, the same host twice: one worker named gpu-a by its hostname (unshare --uts), one
    by `--host-id gpu-a` with device lock files of its own, so only the database's (host,
    device) lock keeps them apart; a third on gpu-b runs beside them. The two of gpu-a never
    overlap, and both take turns."""
    a1 = spawn_worker("cuda:0", prefix=on_host("gpu-a"), GPUQUEUE_STUB_DELAY="0.3")
    a2 = spawn_worker(
        "cuda:0",
        args=("--host-id", "gpu-a"),
        GPUQUEUE_STUB_DELAY="0.3",
        GPUQUEUE_GPU_LOCK_DIR=str(tmp_path / "other-locks"),
    )
    b = spawn_worker("cuda:0", prefix=on_host("gpu-b"), GPUQUEUE_STUB_DELAY="0.3")
    for proc in (a1, a2, b):
        await proc.registered(pool)
    ids = await submit_many(pool, conversation_id, alice, 12)
    await wait_all_final(pool, ids, within=30)
    done = await _intervals(pool)
    on_a = [r for r in done if r["pid"] in (a1.pid, a2.pid)]
    assert {r["pid"] for r in on_a} == {a1.pid, a2.pid}
    for earlier, later in itertools.pairwise(on_a):
        assert earlier["finished_at"] <= later["started_at"], (earlier, later)
    assert any(_overlap(x, y) for x in on_a for y in done if y["pid"] == b.pid), done


def _local_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets (its database sessions' client ports)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        if match:
            inodes.add(match.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_a_standby_worker_holds_no_snapshot_while_another_holds_the_gpu(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Item 9: a worker waiting for a GPU the other holds through a long job shows backend_xmin
    NULL on every one of its sessions, sampled for a second after its claim found the GPU busy.
    (Its device lock files are its own, so it is the database's lock it waits for; its poll and
    sweep are slow, so nothing of its own runs meanwhile.)"""
    holder = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="20")
    await holder.registered(pool)
    busy = await submit(pool, conversation_id, alice, steps=1)
    await wait_status(pool, busy, "processing")
    standby = spawn_worker(
        "cuda:0",
        GPUQUEUE_POLL_INTERVAL_S="30",
        GPUQUEUE_SWEEP_INTERVAL_S="30",
        GPUQUEUE_GPU_LOCK_DIR=str(tmp_path / "standby-locks"),
    )
    registered = await standby.registered(pool)

    async def sessions() -> list[db.Row]:
        return await rows(
            pool,
            "SELECT pid, state, backend_xmin::text AS xmin, query"
            " FROM pg_stat_activity WHERE client_port = ANY(%(ports)s)",
            {"ports": list(_local_ports(standby.pid))},
        )

    async def tried_to_claim_and_swept() -> bool:
        """Its claim ran (on old main: runs, waiting for the lock) and its first sweep is over."""
        found = await sessions()
        claimed = any(
            s["pid"] == registered["session_pid"] and "gq_lock_and_claim" in s["query"]
            for s in found
        )
        swept = any("gq_requeue_lost" in s["query"] and s["state"] == "idle" for s in found)
        return claimed and swept

    await eventually(tried_to_claim_and_swept, within=10)
    for _ in range(20):
        found = await sessions()
        assert len(found) >= 3, found  # its worker session, its listener and its pool
        assert all(s["xmin"] is None for s in found), found
        await asyncio.sleep(0.05)  # samples spread over a second; no condition to wait for
    assert await rows(pool, "SELECT status FROM jobs WHERE id = %(id)s", {"id": busy}) == [
        {"status": "processing"}
    ]


async def test_a_cut_session_keeps_the_gpu_until_its_pipeline_has_stopped(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker
) -> None:
    """Item 14: pg_terminate_backend on a worker's session while its pipeline is inside a 3 s
    step. The database lock frees at once and the job is requeued, but another worker process
    on the same host and device starts it only after that step ended: no job starts on a GPU
    while a pipeline still runs there (read from job_events)."""
    first = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="3")
    registered = await first.registered(pool)
    job_id = await submit(pool, conversation_id, alice, max_attempts=3, steps=1)
    await wait_status(pool, job_id, "processing")
    second = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="0")
    await second.registered(pool)
    await rows(pool, "SELECT pg_terminate_backend(%(pid)s)", {"pid": registered["session_pid"]})
    await wait_status(pool, job_id, "complete", within=20)
    events = await rows(
        pool,
        "SELECT status, at FROM job_events WHERE job_id = %(id)s ORDER BY seq",
        {"id": job_id},
    )
    started = [e["at"] for e in events if e["status"] == "processing"]
    assert [e["status"] for e in events] == [
        "pending",
        "queued",
        "processing",
        "queued",
        "processing",
        "complete",
    ]
    assert (started[1] - started[0]).total_seconds() >= 2.95, events
    assert "lost its session" in first.log()


@pytest.fixture
async def claim_bomb(pool: db.Pool) -> None:
    """A job whose claim the database refuses (a CHECK violation, as a full message once was)."""
    async with pool.connection() as conn:
        await conn.execute(
            """
            CREATE FUNCTION test_claim_bomb() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.status = 'processing' AND NEW.prompt = '[bomb]' THEN
                    RAISE EXCEPTION 'injected claim failure' USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_claim_bomb BEFORE UPDATE ON jobs
                FOR EACH ROW EXECUTE FUNCTION test_claim_bomb();
            """
        )


async def test_a_claim_that_raises_frees_the_gpu_lock_and_the_worker_goes_on(
    pool: db.Pool,
    conversation_id: str,
    alice: Actor,
    spawn_worker: SpawnWorker,
    claim_bomb: None,
) -> None:
    """Item 3 (the worker's side): a claim that raises must not leak the session's GPU lock
    (session locks survive the rollback) nor end the worker. Once the bad job is canceled the
    same worker runs the next one, and afterwards no GPU lock is left held."""
    worker = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="0")
    await worker.registered(pool)
    bomb = await submit(pool, conversation_id, alice, "[bomb]", priority=5)

    async def claim_failed_twice() -> bool:
        return worker.log().count("failed (injected claim failure)") >= 2

    await eventually(claim_failed_twice, within=10)
    assert worker.alive(), worker.log()
    await jobs.cancel(pool, bomb, actor=ADMIN)
    fine = await submit(pool, conversation_id, alice, "fine")
    row = await wait_status(pool, fine, "complete")
    assert [w["pid"] for w in await live_workers(pool) if w["id"] == row["worker_id"]] == [
        worker.pid
    ]

    async def no_lock_held() -> bool:
        return await gpu_locks(pool) == []

    await eventually(no_lock_held, within=5)


async def test_a_claim_past_its_deadline_abandons_the_session_and_writes_nothing(
    pool: db.Pool, conversation_id: str, alice: Actor, start_worker: StartWorker
) -> None:
    """Item 2 (the claim's deadline): a claim round trip slower than session_deadline_s (here the
    first claim of a job sleeps 3 s in the database) means the session is lost: the worker
    abandons it and comes back as a new worker, which runs the job; the first registration
    writes nothing for it (at most its claim, which the sweep then takes back)."""
    async with pool.connection() as conn:
        await conn.execute(
            """
            CREATE SEQUENCE test_slow_claims;
            CREATE FUNCTION test_slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.status = 'processing' AND nextval('test_slow_claims') = 1 THEN
                    PERFORM pg_sleep(3);
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_slow_claim BEFORE UPDATE ON jobs
                FOR EACH ROW EXECUTE FUNCTION test_slow_claim();
            """
        )
    handle = start_worker("cuda:0", session_deadline_s=0.5)

    async def registered() -> str | None:
        return handle.worker.worker_id

    first = await eventually(registered)
    job_id = await submit(pool, conversation_id, alice, max_attempts=3)
    row = await wait_status(pool, job_id, "complete", within=20)
    assert handle.worker.sessions == 2
    assert str(row["worker_id"]) == handle.worker.worker_id != first
    events = await rows(
        pool, "SELECT status FROM job_events WHERE job_id = %(id)s ORDER BY seq", {"id": job_id}
    )
    assert [e["status"] for e in events] in (
        ["pending", "queued", "processing", "complete"],
        ["pending", "queued", "processing", "queued", "processing", "complete"],
    )
