"""Packaging (contract: Operations): the wheel carries the migrations and the queries, so
`pip install .` (not editable) then `gpuqueue migrate` works outside the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from queueing.migrate import MIGRATIONS_DIR

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("queueing", "web", "gpu_worker", "gpuqueue")


def test_the_wheel_ships_every_migration_and_the_queries(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: building in place would leave build/ in the tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        timeout=120,
    )
    (wheel,) = (tmp_path / "dist").glob("gpuqueue-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    migrations = {f"queueing/migrations/{p.name}" for p in MIGRATIONS_DIR.glob("*.sql")}
    assert any("R__" in name for name in migrations) and any("001_" in name for name in migrations)
    assert migrations <= shipped
    assert "queueing/sql/queries.sql" in shipped
