"""One status vocabulary: the SQL domain, the Python StrEnum and the JS module list the same
states in the same order, and the database names the rule a row breaks."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness import databases
from queueing import db, jobs
from queueing.actors import Actor
from queueing.migrate import MIGRATIONS_DIR, migrate
from queueing.states import FINAL, JobStatus
from tests import queries

JS_MODULE = Path(__file__).resolve().parents[2] / "web" / "static" / "jobStatus.js"
REQUEST = jobs.JobRequest(prompt="a lighthouse at dusk", params={"steps": 3, "seed": 1})


def js_strings(name: str) -> list[str]:
    """The strings of the first array literal of strings after `name` in jobStatus.js."""
    source = JS_MODULE.read_text()
    strings = r"""\[\s*((?:["'][^"']*["']\s*,?\s*)+)\]"""
    match = re.search(rf"\b{name}\b.*?{strings}", source, re.DOTALL)
    assert match, f"{name} not found in {JS_MODULE}"
    return re.findall(r"[\"']([^\"']*)[\"']", match.group(1))


async def test_sql_python_and_js_list_the_same_states_in_order(pool: db.Pool) -> None:
    """The domain's list, JobStatus and jobStatus.js are one vocabulary (issue 11, item 2)."""
    [sql] = await queries.fetch_all(pool, "job_statuses")
    assert sql["statuses"] == list(JobStatus)
    assert set(sql["final"]) == FINAL
    assert js_strings("JOB_STATUSES") == list(JobStatus)
    assert set(js_strings("FINAL_STATUSES")) == FINAL


async def test_the_domain_reads_its_states_from_the_one_sql_list(pool: db.Pool) -> None:
    [check] = await queries.fetch_all(pool, "job_status_check")
    assert check["conname"] == "job_status_known"
    assert "gq_job_statuses()" in check["definition"]


async def test_every_check_on_jobs_and_job_events_is_named_for_its_rule(pool: db.Pool) -> None:
    assert await queries.fetch_all(pool, "unnamed_job_checks") == []


async def test_a_finished_job_without_finished_at_is_refused_by_its_named_rule(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    """R5.6: a final state and finished_at go together; the violation says which rule broke."""
    job = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    await jobs.cancel(pool, job["job_id"], actor=alice)
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        await queries.fetch_all(pool, "job_clear_finished_at", {"job_id": job["job_id"]})
    assert refused.value.diag.constraint_name == "jobs_finished_at_matches_status"


async def test_the_finished_at_rule_lists_the_final_states(pool: db.Pool) -> None:
    """jobs_finished_at_matches_status names the final states as literals (013: a function call
    there ran at every statement writing jobs); they are gq_final_job_statuses()'s, FINAL."""
    [row] = await queries.fetch_all(
        pool, "jobs_constraint", {"name": "jobs_finished_at_matches_status"}
    )
    assert "gq_final_job_statuses" not in row["definition"]
    assert set(re.findall(r"'([a-z_]+)'", row["definition"])) == FINAL


async def test_a_status_outside_the_vocabulary_is_refused_by_the_domain(
    pool: db.Pool, alice: Actor, conversation_id: str
) -> None:
    job = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        await queries.fetch_all(
            pool, "job_set_status", {"job_id": job["job_id"], "status": "paused"}
        )
    assert refused.value.diag.constraint_name == "job_status_known"


@pytest.fixture
def empty_url(pg_admin_url: str) -> Iterator[str]:
    name = databases.unique_name("gq_before_006")
    yield databases.create_database(pg_admin_url, name)
    databases.drop_database(pg_admin_url, name)


async def test_the_domain_comes_in_without_rewriting_the_tables(
    empty_url: str, tmp_path: Path
) -> None:
    """006 relabels jobs.status and job_events.status of a database at 005: same files on disk,
    every row kept."""
    for path in sorted(MIGRATIONS_DIR.glob("00[1-5]_*.sql")):
        shutil.copy(path, tmp_path)
    await migrate(empty_url, tmp_path)
    conn = await db.connect(empty_url, "gpuqueue-test")
    try:
        assert await queries.fetch_value(conn, "seed_jobs_before_006") == JobStatus.CANCELED
        storage = await queries.fetch_all(conn, "job_tables_storage")
        counts = await queries.fetch_all(conn, "job_status_counts")
        shutil.copy(MIGRATIONS_DIR / "006_job_status.sql", tmp_path)  # 006 alone, not 007
        assert await migrate(empty_url, tmp_path) == ["006_job_status"]
        assert await queries.fetch_all(conn, "job_tables_storage") == storage
        assert await queries.fetch_all(conn, "job_status_counts") == counts
    finally:
        await conn.close()
