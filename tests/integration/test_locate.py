"""Finding a database: the URL given, else the local server, else the embedded one."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import logging
import os
import sys
from pathlib import Path
import psycopg
from queueing import locate
from queueing.config import Settings
logging.basicConfig(level=logging.INFO)  # as the CLI logs
settings = Settings.from_env({**os.environ, "DATABASE_URL": "", "GPUQUEUE_DATA_DIR": sys.argv[1]})
url = locate.find_database_url(settings, "gpuqueue")
with psycopg.connect(url) as conn:
    print(url)
    query = "SELECT current_database(), current_setting('server_version_num')"
    print(conn.execute(query).fetchone())
"""


@pytest.mark.slow
def test_without_a_server_at_the_probe_address_the_embedded_one_starts(tmp_path: Path) -> None:
    """Nothing at the probe address: an embedded PostgreSQL starts, its data in data_dir; the
    console gets one line for it, the wheel's command dumps go to a log file in data_dir."""
    env = {**os.environ, "GPUQUEUE_PG_PROBE": "127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    url, row = result.stdout.strip().splitlines()
    [line] = result.stderr.strip().splitlines()
    assert "starting the embedded one" in line
    assert "initdb" in (tmp_path / "embedded-postgres.log").read_text()
    assert "127.0.0.1:1" not in url
    assert "'gpuqueue'" in row and int(row.split("'")[3]) >= 160000
    assert (tmp_path / "pg" / "PG_VERSION").exists()


def test_a_given_url_wins(tmp_path: Path) -> None:
    from queueing import locate
    from queueing.config import Settings

    settings = Settings.from_env({"DATABASE_URL": "postgresql://example.invalid/db"})
    assert (
        locate.find_database_url(dataclasses.replace(settings, data_dir=tmp_path), "x")
        == "postgresql://example.invalid/db"
    )
