"""`gpuqueue user weight NAME W` (contract: Fair share)."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import Any

from queueing import db, users
from queueing.config import Settings
from queueing.errors import QueueError

MAX_WEIGHT = 1000.0  # users_weight_in_range


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a weight is a number, not {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_WEIGHT):
        raise argparse.ArgumentTypeError(f"a weight is above 0 and at most {MAX_WEIGHT:g}")
    return value


async def _set_weight(url: str, name: str, weight: float) -> int:
    conn = await db.connect(url, "gpuqueue-user")
    try:
        stored = await users.set_weight(conn, name, weight)
    except QueueError as exc:
        print(f"gpuqueue user weight: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    print(f"user {name} now has weight {stored:g} (for the jobs queued from now on)")
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    from gpuqueue.cli import database_url

    return asyncio.run(_set_weight(database_url(args, settings), args.name, args.weight))


def add_parser(sub: Any) -> None:
    """The `user` subcommand, on the CLI's subparsers."""
    user = sub.add_parser("user", help="users' share of the GPUs")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    weight = user_sub.add_parser(
        "weight", help="a user's weight: a user of weight 2 gets twice the share of weight 1"
    )
    weight.add_argument("name")
    weight.add_argument("weight", type=_weight, metavar="W", help="above 0, at most 1000")
    weight.set_defaults(func=run)
