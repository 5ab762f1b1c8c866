"""Applies the schema in queueing/migrations/: the numbered files, then the repeatable ones.

Numbered files (NNN_name.sql: tables, indexes, constraints, data) are history: applied in order,
once each, each in its own transaction, with a checksum that refuses to run when an applied one
was edited. Repeatable files (R__name.sql: every function and view, CREATE OR REPLACE) are the
one definition of each; all of them are re-applied in one transaction, in name order, when any
of them changed or a numbered file was applied (it may have dropped a view to alter a table).
Unchanged ones are left alone: every start of `gpuqueue run` migrates, and replacing a view
waits for, then blocks, every query that reads it.

An advisory lock serialises concurrent runs (both succeed; the second finds nothing to do).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from . import db
from .sql import QUERIES

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")  # shipped with the package
_NUMBERED = re.compile(r"^\d{3,}_[\w-]+\.sql$")
_REPEATABLE = re.compile(r"^R__[\w-]+\.sql$")


class MigrationError(RuntimeError):
    """Migrations cannot be applied as they stand (a changed or missing applied file)."""


@dataclass(frozen=True)
class Migration:
    version: str  # the file name without .sql
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path, pattern: re.Pattern[str] = _NUMBERED) -> list[Migration]:
    """The directory's numbered (or, with _REPEATABLE, repeatable) files in name order."""
    return [
        Migration(path.name.removesuffix(".sql"), path)
        for path in sorted(directory.iterdir())
        if pattern.match(path.name)
    ]


def repeatables(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    return discover(directory, _REPEATABLE)


async def migrate(url: str, directory: Path | None = None) -> list[str]:
    """Apply the pending numbered migrations, then the repeatable ones if due; return the
    numbered versions applied by this call. `directory` defaults to the shipped migrations."""
    directory = directory or MIGRATIONS_DIR
    available = discover(directory)
    conn = await db.connect(url, "gpuqueue-migrate", "-c lock_timeout=0")
    applied_now: list[str] = []
    try:
        await conn.execute(QUERIES["migrations_lock"])
        await conn.execute(QUERIES["migrations_table"])
        cur = await conn.execute(QUERIES["migrations_applied"])
        applied = {row["version"]: row["checksum"] for row in await cur.fetchall()}
        known = {m.version for m in available}
        for version in applied:
            if version not in known:
                raise MigrationError(f"migration {version} was applied but its file is missing")
        for migration in available:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    QUERIES["migration_record"],
                    {"version": migration.version, "checksum": migration.checksum},
                )
            log.debug("applied migration %s", migration.version)
            applied_now.append(migration.version)
        await _apply_repeatables(conn, repeatables(directory), force=bool(applied_now))
        await conn.execute(QUERIES["migrations_unlock"])
    finally:
        await conn.close()
    return applied_now


async def _apply_repeatables(conn: db.Connection, files: list[Migration], *, force: bool) -> None:
    """Re-apply every repeatable file, in one transaction, when one changed or `force`."""
    await conn.execute(QUERIES["repeatables_table"])
    cur = await conn.execute(QUERIES["repeatables_applied"])
    recorded = {row["name"]: row["checksum"] for row in await cur.fetchall()}
    if not force and recorded == {m.version: m.checksum for m in files}:
        return
    async with conn.transaction():
        # The files define functions that call each other: as pg_dump does, bodies are checked
        # when called, not when created, so no file has to come before another.
        await conn.execute(QUERIES["function_bodies_unchecked"])
        await conn.execute(QUERIES["repeatables_forget"])
        for file in files:
            await conn.execute(file.sql.encode())
            await conn.execute(
                QUERIES["repeatable_record"], {"name": file.version, "checksum": file.checksum}
            )
    log.debug("applied repeatable migrations %s", ", ".join(m.version for m in files))
