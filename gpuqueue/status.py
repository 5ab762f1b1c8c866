"""`gpuqueue status`: the operator's view of the queue, as a table or as JSON.

Counts per status, each model with its workers and jobs, the head of each model's queue in
claim order with positions and ETAs, the live workers with their GPU (host and device) and model,
the job each runs and how long it has held its GPU lock, and the oldest queued job's age.
Everything is read from the database, so it shows the same from any machine. `--watch` redraws
it every second until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any, TextIO

import psycopg

from queueing import db, models, positions, workers
from queueing.config import Settings
from queueing.states import JobStatus

QUEUE_SHOWN = 50
WATCH_INTERVAL_S = 1.0
CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase the screen (ANSI)


async def collect(
    conn: db.Db, *, limit: int = QUEUE_SHOWN, default_model: str = Settings.default_model
) -> dict[str, Any]:
    """The status as plain data (what --json prints); `limit` jobs of each model's queue."""
    overview = await positions.queue_overview(conn)
    served = await models.list_models(conn, default_model)
    head = await positions.queue_head(conn, limit)
    live = await workers.live_workers(conn)
    model = await positions.eta_model(conn)
    counts = {row["status"]: row["jobs"] for row in overview}
    oldest = next((r["oldest_queued_s"] for r in overview if r["status"] == JobStatus.QUEUED), None)
    return {
        "counts": {status.value: counts.get(status, 0) for status in JobStatus},
        "oldest_queued_s": oldest,
        "models": [dict(m) for m in served],
        "queue": [
            {
                "model": row["model"],
                "queue_position": row["queue_position"],
                "job_id": str(row["job_id"]),
                "user": row["user_name"],
                "priority": row["priority"],
                "attempts": row["attempts"],
                "max_attempts": row["max_attempts"],
                "waiting_s": row["waiting_s"],
                "retry_in_s": row["retry_in_s"] or None,
                "eta_s": model.eta_s(
                    row["model"], row["queue_position"], row["work_ahead"], row["start_tag"]
                ),
                "prompt": row["prompt"],
            }
            for row in head
        ],
        "workers": [
            {
                "worker_id": str(w["worker_id"]),
                "host": w["host"],
                "device": w["device"],
                "backend": w["backend"],
                "model": w["model"],
                "hostname": w["hostname"],
                "pid": w["pid"],
                "job_id": None if w["job_id"] is None else str(w["job_id"]),
                "lock_held_s": w["lock_held_s"],
            }
            for w in live
        ],
    }


async def show_status(
    url: str,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    lock_warn_s: float = Settings.lock_warn_s,
    default_model: str = Settings.default_model,
) -> int:
    """Print the status; 0 when the database answered, 1 when it did not."""
    out = out or sys.stdout
    try:
        conn = await db.connect(url, "gpuqueue-status")
    except psycopg.OperationalError as exc:
        print(f"gpuqueue status: cannot reach the database: {exc}", file=sys.stderr)
        return 1
    try:
        data = await collect(conn, default_model=default_model)
    except psycopg.errors.UndefinedTable:
        print("gpuqueue status: the schema is missing; run `gpuqueue migrate`", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    if as_json:
        print(json.dumps(data, indent=2), file=out)
    else:
        print(render(data, lock_warn_s=lock_warn_s), file=out)
    return 0


async def watch_status(
    url: str,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    lock_warn_s: float = Settings.lock_warn_s,
    default_model: str = Settings.default_model,
    interval_s: float = WATCH_INTERVAL_S,
) -> int:
    """Redraw the status every `interval_s` (--json: one line each) until SIGINT or SIGTERM,
    then exit 0. A database that stops answering is said on screen and tried again at the next
    redraw: a watch on a wall outlives a restart of PostgreSQL."""
    out = out or sys.stdout
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    conn: db.Connection | None = None
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                conn = conn or await db.connect(url, "gpuqueue-status")
                data: dict[str, Any] | None = await collect(conn, default_model=default_model)
                problem = ""
            except psycopg.Error as exc:
                data, problem = None, f"cannot read the status ({exc}); trying again"
                if conn is not None:
                    await conn.close()
                    conn = None
            if as_json:
                print(json.dumps(data) if data else problem, file=out if data else sys.stderr)
            else:
                heading = f"gpuqueue status every {interval_s:g}s, Ctrl-C to stop"
                body = render(data, lock_warn_s=lock_warn_s) if data else problem
                out.write(f"{CLEAR_SCREEN}{heading}  {time.strftime('%H:%M:%S')}\n\n{body}\n")
            out.flush()
            left = interval_s - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(left, 0.0))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if conn is not None:
            await conn.close()
    return 0


def render(data: dict[str, Any], *, lock_warn_s: float = Settings.lock_warn_s) -> str:
    """The status as a terminal table."""
    counts = data["counts"]
    lines = ["jobs    " + "  ".join(f"{status} {counts[status]}" for status in JobStatus)]
    oldest = data["oldest_queued_s"]
    lines.append(f"oldest queued: {duration(oldest) if oldest is not None else '-'}")

    served = data["models"]
    lines += ["", f"models ({len(served)})"]
    lines += table(
        ["model", "workers", "queued", "processing"],
        [
            [
                m["name"] + (" (default)" if m["default"] else ""),
                str(m["workers"]),
                str(m["queued"]),
                str(m["processing"]),
            ]
            for m in served
        ],
        right={1, 2, 3},
    )
    for m in served:
        queue = [job for job in data["queue"] if job["model"] == m["name"]]
        if not queue and not m["queued"]:
            continue
        shown = f", first {len(queue)} shown" if m["queued"] > len(queue) else ""
        waiting = "" if m["workers"] else "; no live worker serves it"
        lines += ["", f"queue of {m['name']} ({m['queued']} queued{shown}{waiting})"]
        lines += _queue_table(queue)
    if not counts[JobStatus.QUEUED]:
        lines += ["", "queue (empty)"]

    live = data["workers"]
    lines += ["", f"workers ({len(live)} live)"]
    if live:
        rows = []
        for w in live:
            held = w["lock_held_s"]
            lock = "-" if held is None else duration(held)
            if held is not None and held > lock_warn_s:
                lock += f" (over {lock_warn_s:g}s!)"
            rows.append(
                [
                    w["host"],
                    w["device"],
                    w["model"],
                    w["worker_id"][:8],
                    w["backend"],
                    f"{w['hostname']}:{w['pid']}",
                    "idle" if w["job_id"] is None else w["job_id"][:8],
                    lock,
                ]
            )
        lines += table(
            ["host", "device", "model", "worker", "backend", "machine:pid", "job", "GPU lock held"],
            rows,
        )
    else:
        lines.append("  (none)")
    return "\n".join(lines)


def _queue_table(queue: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            str(job["queue_position"]),
            job["job_id"][:8],
            job["user"],
            str(job["priority"]),
            f"{job['attempts']}/{job['max_attempts']}",
            duration(job["waiting_s"]),
            "-" if job["eta_s"] is None else duration(job["eta_s"]),
            _prompt(job["prompt"])
            + (f"  (retry in {duration(job['retry_in_s'])})" if job["retry_in_s"] else ""),
        ]
        for job in queue
    ]
    return table(
        ["pos", "job", "user", "pri", "tries", "waiting", "eta", "prompt"], rows, right={0, 3}
    )


def table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right or set()
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return (
            "  "
            + "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )

    return [line(header), *(line(r) for r in rows)]


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _prompt(text: str, width: int = 48) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
