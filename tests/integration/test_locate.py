"""Finding a database: the URL given, else the local server, else the embedded one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import sys
from pathlib import Path
import psycopg
from queueing import locate
url = locate.find_database_url(env_var="GPUQUEUE_TEST_NO_SUCH_VAR", data_dir=Path(sys.argv[1]),
                               database="gpuqueue")
with psycopg.connect(url) as conn:
    print(url)
    query = "SELECT current_database(), current_setting('server_version_num')"
    print(conn.execute(query).fetchone())
"""


@pytest.mark.slow
def test_without_a_server_at_the_probe_address_the_embedded_one_starts(tmp_path: Path) -> None:
    """Nothing at the probe address: an embedded PostgreSQL starts, its data in data_dir."""
    env = {**os.environ, "GPUQUEUE_PG_PROBE": "127.0.0.1:1"}
    env.pop("GPUQUEUE_TEST_NO_SUCH_VAR", None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    url, row = out.strip().splitlines()
    assert "127.0.0.1:1" not in url
    assert "'gpuqueue'" in row and int(row.split("'")[3]) >= 160000
    assert (tmp_path / "pg" / "PG_VERSION").exists()


def test_a_given_url_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from queueing import locate

    monkeypatch.setenv("GPUQUEUE_TEST_URL", "postgresql://example.invalid/db")
    assert (
        locate.find_database_url(env_var="GPUQUEUE_TEST_URL", data_dir=tmp_path, database="x")
        == "postgresql://example.invalid/db"
    )
