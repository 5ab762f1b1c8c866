"""`gpuqueue migrate`: in order, once each, checksummed, safe to run twice at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from queueing.migrate import MigrationError, migrate, migrations_dir
from tests import dbserver


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    name = dbserver.unique_name("gq_empty")
    url = dbserver.create_database(pg_admin_url, name)
    yield url
    dbserver.drop_database(pg_admin_url, name)


def applied_versions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    return [r[0] for r in rows]


async def test_migrate_applies_every_file_once_in_order(empty_database_url: str) -> None:
    expected = sorted(p.stem for p in migrations_dir().glob("[0-9]*.sql"))
    assert await migrate(empty_database_url) == expected
    assert await migrate(empty_database_url) == []
    assert applied_versions(empty_database_url) == expected


def test_two_migrate_processes_started_together_both_succeed(empty_database_url: str) -> None:
    command = [
        sys.executable,
        "-m",
        "gpuqueue.cli",
        "--database-url",
        empty_database_url,
        "migrate",
    ]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert len(applied_versions(empty_database_url)) == len(
        list(migrations_dir().glob("[0-9]*.sql"))
    )


async def test_migrate_refuses_when_an_applied_file_changed(
    empty_database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    await migrate(empty_database_url, folder)
    first = sorted(folder.glob("001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(empty_database_url, folder)


async def test_a_failing_migration_rolls_back_whole(
    empty_database_url: str, tmp_path: Path
) -> None:
    """R7.5: a migration that fails half-way leaves nothing behind, and is not recorded."""
    folder = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), folder)
    (folder / "999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT 1 / 0;\n")
    with pytest.raises(psycopg.errors.DivisionByZero):
        await migrate(empty_database_url, folder)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
    assert "999_broken" not in applied_versions(empty_database_url)
