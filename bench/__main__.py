"""`python -m bench [family ...] [--quick]`: run the figure families, print one table, write it.

With no family named, every family runs, in the order of FAMILIES. The peer (PgQueuer) is
installed into this interpreter's environment on first use (bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench import env
from bench.env import Context
from bench.report import MISS, NOT_RUN, SKIPPED, Figure, markdown, not_run, write_results
from harness import databases
from harness.processes import REPO, raise_open_files_limit

# family -> module; each module has `async def run(ctx) -> list[Figure]`.
FAMILIES: dict[str, str] = {
    "positions": "bench.positions",
    "merge": "bench.merge",
    "enqueue": "bench.enqueue",
    "dispatch": "bench.dispatch",
    "worker": "bench.worker",
    "eta": "bench.eta",
    "peer": "bench.peer",
    "http": "bench.http",
    "scaling": "bench.scaling",
    "websocket": "bench.websocket",
    "diffusers": "bench.diffusers",
    "batch": "bench.batch",
    "gpu": "bench.gpu",
}
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
RESULTS = Path(__file__).with_name("results")


def ensure_peer_installed() -> str | None:
    """Install PgQueuer into this environment when it is missing; None on success, else why."""
    if importlib.util.find_spec("pgqueuer") is not None:
        return None
    env.log(f"installing the peer: pip install -r {REQUIREMENTS.name}")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    importlib.invalidate_caches()
    if result.returncode != 0 or importlib.util.find_spec("pgqueuer") is None:
        return f"pip install -r bench/requirements.txt failed: {result.stderr.strip()[-500:]}"
    return None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


async def _server_facts(admin_url: str) -> dict[str, Any]:
    from queueing import db

    conn = await db.connect(admin_url, env.APP)
    try:
        return await env.fetch_row(conn, "server_version")
    finally:
        await conn.close()


async def run_families(names: Sequence[str], ctx: Context) -> list[Figure]:
    figures: list[Figure] = []
    for name in names:
        started = time.perf_counter()
        env.log(f"{name}: starting")
        module = importlib.import_module(FAMILIES[name])
        runner: Callable[[Context], Awaitable[list[Figure]]] = module.run
        try:
            got = await runner(ctx)
        except Exception as exc:
            env.log(f"{name}: FAILED\n{traceback.format_exc()}")
            got = [not_run(name, f"{name} (whole family)", f"{type(exc).__name__}: {exc}")]
        figures += got
        env.log(f"{name}: done in {time.perf_counter() - started:.0f} s")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "families",
        nargs="*",
        metavar="family",
        help=f"families to run (default: all): {', '.join(FAMILIES)}",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for development")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="where latest.json and latest.md go"
    )
    args = parser.parse_args(argv)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    names = [f for f in FAMILIES if f in args.families] if args.families else list(FAMILIES)

    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    if "peer" in names:
        problem = ensure_peer_installed()
        if problem:
            env.log(problem)
    raise_open_files_limit()

    admin_url = databases.admin_url()
    scratch = Path(tempfile.mkdtemp(prefix="gpuqueue-bench-"))
    ctx = Context(admin_url=admin_url, quick=args.quick, scratch=scratch)
    try:
        facts = asyncio.run(_server_facts(admin_url))
        figures = asyncio.run(run_families(names, ctx))
    finally:
        if os.environ.get("GPUQUEUE_BENCH_KEEP_SCRATCH"):
            env.log(f"logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    wall = time.perf_counter() - started
    if facts.get("autovacuum") == "off":
        ctx.notes.append(
            "autovacuum is off on this server: the benchmark runs VACUUM (ANALYZE) itself after "
            "each seed, as a production server's autovacuum would."
        )
    meta = {
        "started_at": started_at,
        "wall_s": round(wall, 1),
        "quick": args.quick,
        "families": names,
        "commit": _git_commit(),
        "postgres": facts.get("version"),
        "server": facts,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    table = markdown(figures)
    print(table)
    print(f"\nwall time: {wall:.0f} s" + (" (quick mode)" if args.quick else ""))
    for note in ctx.notes:
        print(f"- {note}")
    json_path, md_path = write_results(args.out, figures, meta, ctx.notes)
    env.log(f"written: {json_path} and {md_path}")
    missed = sum(1 for f in figures if f.verdict == MISS)
    broken = sum(1 for f in figures if f.verdict == NOT_RUN)
    skipped = sum(1 for f in figures if f.verdict == SKIPPED)
    env.log(f"{missed} MISS, {broken} NOT RUN, {skipped} SKIPPED, wall time {wall:.0f} s")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
