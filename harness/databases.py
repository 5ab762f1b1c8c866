"""The PostgreSQL server the tests and the benchmark run against, and databases cloned from a
migrated template.

TEST_DATABASE_URL when set; else the server at GPUQUEUE_PG_PROBE (127.0.0.1:5432) when it
answers; else an embedded server in a temporary folder, removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from queueing import locate
from queueing.config import Settings
from queueing.migrate import migrate


def admin_url() -> str:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        return given
    url = locate.local_server_url(Settings.from_env().pg_probe, "postgres")
    if url is not None:
        return url
    folder = Path(tempfile.mkdtemp(prefix="gpuqueue-test-pg-"))
    return locate.embedded_server_url(folder, "postgres")


def create_database(admin: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(query)
    return locate.with_database(admin, name)


def drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def migrated_template(admin: str) -> str:
    """A fresh migrated database to clone; returns its name."""
    name = f"gq_template_{uuid.uuid4().hex[:10]}"
    url = create_database(admin, name)
    asyncio.run(migrate(url))
    return name


def unique_name(prefix: str = "gq_test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
