"""`gpuqueue prune --finished-before DURATION [--images]` (contract: Operations)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from queueing import db
from queueing.config import Settings
from queueing.retention import parse_duration, prune


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _prune(url: str, args: argparse.Namespace) -> int:
    conn = await db.connect(url, "gpuqueue-prune")
    try:
        result = await prune(conn, args.finished_before, images=args.images)
    finally:
        await conn.close()
    what = f"{result.events} event(s)" + (f" and {result.images} image(s)" if args.images else "")
    print(f"removed {what} of {result.jobs} job(s) finished before {result.cutoff.isoformat()}")
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    from gpuqueue.cli import database_url

    return asyncio.run(_prune(database_url(args, settings), args))


def add_parser(sub: Any) -> None:
    """The `prune` subcommand, on the CLI's subparsers."""
    p = sub.add_parser(
        "prune",
        help="delete the events (and images) of jobs finished long ago, in small batches",
    )
    p.add_argument(
        "--finished-before",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="jobs that finished longer ago than this: 90s, 30m, 12h, 7d, 2w, 1d12h",
    )
    p.add_argument("--images", action="store_true", help="delete their images too")
    p.set_defaults(func=run)
