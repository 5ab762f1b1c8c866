"""`gpuqueue migrate`: numbered files in order, once each, checksummed, safe to run twice at once;
the repeatable files (R__*.sql) the one definition of every function and view."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from harness import databases
from queueing.migrate import MIGRATIONS_DIR, MigrationError, migrate, repeatables


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    name = databases.unique_name("gq_empty")
    url = databases.create_database(pg_admin_url, name)
    yield url
    databases.drop_database(pg_admin_url, name)


def applied_versions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    return [r[0] for r in rows]


async def test_migrate_applies_every_file_once_in_order(empty_database_url: str) -> None:
    expected = sorted(p.stem for p in MIGRATIONS_DIR.glob("[0-9]*.sql"))
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
    assert len(applied_versions(empty_database_url)) == len(list(MIGRATIONS_DIR.glob("[0-9]*.sql")))


async def test_migrate_refuses_when_an_applied_file_changed(
    empty_database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
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
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / "999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT 1 / 0;\n")
    with pytest.raises(psycopg.errors.DivisionByZero):
        await migrate(empty_database_url, folder)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
    assert "999_broken" not in applied_versions(empty_database_url)


# The schema's functions (with their signatures) and views as the database holds them.
SCHEMA_OBJECTS = """
SELECT 'function' AS kind, p.proname AS name, p.oid::regprocedure::text AS signature,
       pg_get_functiondef(p.oid) AS definition
FROM pg_proc AS p WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'view', c.relname, c.relname,
       pg_get_viewdef(c.oid) || (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid,
                                                   a.atttypmod), ', ' ORDER BY a.attnum)
                                 FROM pg_attribute AS a WHERE a.attrelid = c.oid AND a.attnum > 0)
FROM pg_class AS c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'
ORDER BY 1, 3
"""
# Functions a CHECK or a domain's constraint calls are part of the tables' definition, so the
# numbered files own them: replacing one alone would not re-check the stored rows.
CONSTRAINT_FUNCTIONS = """
SELECT DISTINCT 'function' AS kind, p.proname AS name
FROM pg_depend AS d JOIN pg_proc AS p ON p.oid = d.refobjid
WHERE d.classid = 'pg_constraint'::regclass AND d.refclassid = 'pg_proc'::regclass
"""
_DEFINED = re.compile(r"^CREATE OR REPLACE (FUNCTION|VIEW) (\w+)", re.MULTILINE)


def schema_objects(url: str) -> list[tuple[str, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(SCHEMA_OBJECTS).fetchall()]


async def test_every_function_and_view_is_defined_in_exactly_one_repeatable_file(
    empty_database_url: str,
) -> None:
    """One place per function and view: the numbered files hold history, the repeatable files
    the definitions, and each object of the migrated schema is in exactly one of those (but
    for the functions constraints call, which only numbered files define)."""
    await migrate(empty_database_url)
    defined = [
        (kind.lower(), name, file.version)
        for file in repeatables()
        for kind, name in _DEFINED.findall(file.sql)
    ]
    in_database = {(kind, name) for kind, name, _, _ in schema_objects(empty_database_url)}
    with psycopg.connect(empty_database_url) as conn:
        numbered_only = {tuple(row) for row in conn.execute(CONSTRAINT_FUNCTIONS).fetchall()}
    by_object: dict[tuple[str, str], list[str]] = {}
    for kind, name, version in defined:
        by_object.setdefault((kind, name), []).append(version)
    assert {o: files for o, files in by_object.items() if len(files) != 1} == {}
    assert set(by_object) == in_database - numbered_only


async def test_the_migrated_schema_is_what_the_repeatable_files_define(
    empty_database_url: str,
) -> None:
    """Re-applying the repeatable files to a migrated database changes no function or view: what
    `migrate` leaves is exactly what the files say (and applying them again is harmless)."""
    await migrate(empty_database_url)
    before = schema_objects(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        for file in repeatables():
            conn.execute(file.sql.encode())
    assert schema_objects(empty_database_url) == before


def repeatables_applied_at(url: str) -> dict[str, datetime]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT name, applied_at FROM schema_repeatables").fetchall()
    return dict(rows)


async def test_repeatables_are_applied_when_changed_or_after_a_numbered_migration(
    empty_database_url: str, tmp_path: Path
) -> None:
    """Unchanged repeatable files are left alone (replacing a view locks out its readers); an
    edited one is applied, and so are all after a numbered migration, which may drop a view."""
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    await migrate(empty_database_url, folder)
    first = repeatables_applied_at(empty_database_url)
    assert set(first) == {f.version for f in repeatables(folder)}

    await migrate(empty_database_url, folder)
    assert repeatables_applied_at(empty_database_url) == first

    views = folder / "R__views.sql"
    views.write_text(views.read_text() + "\n-- edited\n")
    await migrate(empty_database_url, folder)
    second = repeatables_applied_at(empty_database_url)
    assert all(second[name] > first[name] for name in first)

    (folder / "999_drop_a_view.sql").write_text("DROP VIEW queue_overview;\n")
    assert await migrate(empty_database_url, folder) == ["999_drop_a_view"]
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT to_regclass('queue_overview')").fetchone() != (None,)


# Tables' columns and constraints, beside the functions and views, for comparing whole schemas.
TABLES = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND NOT a.attisdropped
UNION ALL
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), true
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
ORDER BY 1, 2
"""
LAST_BEFORE_REPEATABLES = "005_image_links"  # what deployments had before R__*.sql existed


def whole_schema(url: str) -> tuple[list[tuple[str, ...]], list[tuple[object, ...]]]:
    with psycopg.connect(url) as conn:
        tables = [tuple(row) for row in conn.execute(TABLES).fetchall()]
    return schema_objects(url), tables


async def test_an_upgraded_database_has_the_schema_of_a_fresh_one(
    empty_database_url: str, pg_admin_url: str, tmp_path: Path
) -> None:
    """A database migrated before the repeatable files existed, then migrated again, ends with
    exactly the functions, views, tables and constraints of one migrated in a single run."""
    old = tmp_path / "old"
    old.mkdir()
    for path in MIGRATIONS_DIR.glob("[0-9]*.sql"):
        if path.stem <= LAST_BEFORE_REPEATABLES:
            shutil.copy(path, old)
    name = databases.unique_name("gq_upgraded")
    upgraded = databases.create_database(pg_admin_url, name)
    try:
        await migrate(upgraded, old)
        await migrate(upgraded)
        await migrate(empty_database_url)
        assert whole_schema(upgraded) == whole_schema(empty_database_url)
    finally:
        databases.drop_database(pg_admin_url, name)
