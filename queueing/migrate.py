"""Applies migrations/NNN_name.sql in order, once each, each in its own transaction.

An advisory lock serialises concurrent runs (both succeed; the second finds nothing to do), and a
checksum per applied file refuses to run when history was edited.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import db
from .sql import QUERIES

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{3,})_[\w-]+\.sql$")


class MigrationError(RuntimeError):
    """Migrations cannot be applied as they stand (a changed or missing applied file)."""


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations_dir() -> Path:
    """GPUQUEUE_MIGRATIONS_DIR, else the repository's migrations/ folder."""
    given = os.environ.get("GPUQUEUE_MIGRATIONS_DIR")
    return Path(given) if given else Path(__file__).resolve().parent.parent / "migrations"


def discover(directory: Path) -> list[Migration]:
    found = []
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if match:
            found.append(Migration(path.name.removesuffix(".sql"), path))
    return found


async def migrate(url: str, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations; return the versions applied by this call."""
    available = discover(directory or migrations_dir())
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
            log.info("applied migration %s", migration.version)
            applied_now.append(migration.version)
        await conn.execute(QUERIES["migrations_unlock"])
    finally:
        await conn.close()
    return applied_now
