"""The sweep's guard for roles (issue 10, item 11).

pg_stat_activity hides backend_start of other roles' sessions from a role that is not
superuser and has not pg_read_all_stats; live_workers needs it, so to such a role every other
role's worker looks dead. A worker under that role must not requeue their running jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from gpu_worker.backends.stub import StubBackend
from gpu_worker.worker import Worker
from harness.commands import WorkerChild
from harness.waiting import eventually
from queueing import db
from queueing.actors import Actor
from tests.integration.worker_support import (
    fast_config,
    job,
    live_workers,
    spawn_worker_fixture,  # noqa: F401  (the spawn_worker fixture)
    submit,
    wait_status,
)

SpawnWorker = Callable[..., WorkerChild]


@pytest.fixture
def plain_role(database_url: str) -> Iterator[tuple[str, str]]:
    """(role, URL): a new login role, neither superuser nor in pg_read_all_stats, with the
    rights a worker needs on this test's database; dropped afterwards (roles are cluster-wide)."""
    role = f"gq_plain_{uuid.uuid4().hex[:10]}"
    name = sql.Identifier(role)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(name))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(name))
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}")
            .format(name)
        )  # fmt: skip
        admin.execute(sql.SQL("GRANT USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {}")
                      .format(name))  # fmt: skip
    url = psycopg.conninfo.make_conninfo(database_url, user=role)
    try:
        try:
            psycopg.connect(url).close()
        except psycopg.OperationalError as exc:
            pytest.skip(f"the test server does not let a new role log in here: {exc}")
        yield role, url
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE usename = %s", (role,))  # fmt: skip
            admin.execute(sql.SQL("DROP OWNED BY {}").format(name))
            admin.execute(sql.SQL("DROP ROLE {}").format(name))


async def test_a_worker_that_cannot_see_other_roles_sessions_leaves_their_jobs_alone(
    pool: db.Pool, conversation_id: str, alice: Actor, spawn_worker: SpawnWorker,
    plain_role: tuple[str, str], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A worker under the superuser runs a job; a worker under a plain role starts meanwhile.
    Its sweep would see the running job's worker as dead: it refuses to sweep, says once why and
    what to grant, and the job finishes where it runs, its one attempt never requeued."""
    caplog.set_level(logging.INFO, logger="gpu_worker")
    role, url = plain_role
    owner = spawn_worker("cuda:0", GPUQUEUE_STUB_DELAY="3")
    await owner.registered(pool)
    job_id = await submit(pool, conversation_id, alice, max_attempts=3)
    running = await wait_status(pool, job_id, "processing")
    guarded = Worker(url, device="cuda:9", backend=StubBackend(delay=0.0), backend_name="stub",
                     config=fast_config())  # fmt: skip
    task = asyncio.create_task(guarded.run())
    try:
        assert await eventually(lambda: live_workers(pool, "cuda:9"), within=10)
        # The job runs 3 s more: some fifteen sweep rounds of the guarded worker.
        done = await wait_status(pool, job_id, "complete", within=15)
        assert not task.done()
    finally:
        guarded.request_stop(immediately=True)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 10)
    assert done["worker_id"] == running["worker_id"]
    assert done["attempts"] == 1
    seen = await job(pool, job_id)
    assert [t["status"] for t in seen["transitions"]] == [
        "pending",
        "queued",
        "processing",
        "complete",
    ]
    refusals = [r.getMessage() for r in caplog.records if "not sweeping" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert f"GRANT pg_read_all_stats TO {role}" in refusals[0]
