"""Session pooling is required (issue 15 item 4; README: Scaling out). GPU locks are
session-level advisory locks and the web servers and workers LISTEN, so `gpuqueue web` and
`gpuqueue worker` refuse, at start, a database URL that goes through a transaction pooler: a
real PgBouncer in transaction mode in front of the test's database."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness.commands import WebChild, WorkerChild
from harness.ports import free_port
from harness.waiting import eventually
from queueing import db, session_check
from queueing.locate import with_database

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
needs_pgbouncer = pytest.mark.skipif(
    not Path(PGBOUNCER).exists(), reason="pgbouncer is not installed (.ci/run installs it)"
)


@pytest.fixture
def transaction_pooler(database_url: str, tmp_path: Path) -> Iterator[str]:
    """PgBouncer with pool_mode = transaction in front of the test's server; the test database's
    URL through it. `options` (gpuqueue's session settings) is ignored, as a deployment that
    put PgBouncer in front would have to."""
    server = psycopg.conninfo.conninfo_to_dict(database_url)
    port = free_port()
    config = tmp_path / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={server.get('host', '127.0.0.1')} port={server.get('port', 5432)}"
        f" user={server.get('user', 'postgres')}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\nignore_startup_parameters = options\n"
    )
    config.chmod(0o644)
    # PgBouncer refuses to run as root; it reads its configuration before it drops to -u.
    as_user = ["-u", "nobody"] if os.geteuid() == 0 else []
    with (tmp_path / "pgbouncer.log").open("ab") as log:
        proc = subprocess.Popen([PGBOUNCER, *as_user, str(config)], stdout=log, stderr=log)
    url = with_database(f"postgresql://postgres@127.0.0.1:{port}/postgres", server["dbname"])
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def _answers(url: str) -> bool:
    try:
        conn = await db.connect(url, "gpuqueue-test")
    except psycopg.OperationalError:
        return False
    await conn.close()
    return True


async def test_a_direct_connection_passes_the_check(database_url: str) -> None:
    """Connected to PostgreSQL itself, a connection's transactions share one backend, another
    connection has its own, and a session lock survives: nothing to refuse."""
    found = await session_check.probe(database_url)
    assert found.problem() is None, found
    assert found.first_pid == found.second_pid != found.other_pid


@pytest.mark.parametrize(
    ("seen", "named"),
    [
        (session_check.SessionProbe(7, 8, 9, True, False), "ran on backends 7 and 9"),
        (session_check.SessionProbe(7, 7, 7, True, True), "served by the same backend 7"),
        (session_check.SessionProbe(7, 8, 7, True, False), "lock did not survive"),
    ],
)
def test_each_sign_of_a_transaction_pooler_is_refused_by_name(
    seen: session_check.SessionProbe, named: str
) -> None:
    """Each sign alone is enough (also where no PgBouncer is installed to show them): another
    backend for the next transaction, a backend shared with another connection, or a session
    reset between transactions (the lock gone though the backend is the same)."""
    problem = seen.problem()
    assert problem is not None and named in problem and "transaction pooler" in problem


@needs_pgbouncer
async def test_web_and_worker_refuse_to_start_behind_a_transaction_pooler(
    transaction_pooler: str, database_url: str, tmp_path: Path
) -> None:
    """Both commands exit 2 (a refused configuration, which the systemd units do not restart)
    and say why in their log; the worker never registered, so it never took a job."""
    await eventually(lambda: _answers(transaction_pooler), within=10, what="pgbouncer answers")
    found = await session_check.probe(transaction_pooler)
    assert found.problem() is not None, found
    web = WebChild(transaction_pooler, tmp_path / "web.log")
    worker = WorkerChild(transaction_pooler, tmp_path / "worker.log", device="cuda:0")
    for child in (web, worker):
        assert await child.wait(within=30) == session_check.EXIT_REFUSED, child.log_tail()
        assert "refuses to start" in child.log() and "transaction pooler" in child.log()
    conn = await db.connect(database_url, "gpuqueue-test")
    try:
        cur = await conn.execute("SELECT count(*) AS n FROM workers")
        assert await cur.fetchone() == {"n": 0}
    finally:
        await conn.close()
