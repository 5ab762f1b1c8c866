"""Deep merge of message metadata (issue 10, item 5): one pass per level, not a jsonb_set of the
whole object per nested key.

Two shapes, each merged by gq_jsonb_deep_merge beside 002's merge (bench/sql/merge.sql) in
alternating rounds, the pair stored in a table beforehand (the merge, not the transfer):
- *2,000 nested keys*, the shape the issue measured (~590 ms): `{"a": {k_i: {...}}}` merged
  into the same shape.
- *a PATCH at the limits*, the worst the API lets through: 1,999 keys (666 objects, each
  reaching an object inside an object that exists) into a message of ~188 KiB.
Then that PATCH as a whole through queueing.conversations.merge_metadata, for context: row lock,
merge, the exact size check (its spaced text is over the limit), write, the message back.
"""

from __future__ import annotations

import json
import time
from typing import Any

from psycopg.types.json import Jsonb

from bench import env
from bench.env import Context
from bench.report import Figure, at_most
from bench.stats import ms, p50
from queueing import conversations, db, jobs

FAMILY = "merge"
BASELINE = "002's merge (jsonb_set per nested key), same run"


def nested_keys(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    base = {"a": {f"k{i}": {"x": i} for i in range(n)}}
    patch = {"a": {f"k{i}": {"y": i} for i in range(n)}}
    return base, patch


def patch_at_the_limits() -> tuple[dict[str, Any], dict[str, Any]]:
    base = {"o": {f"k{i}": {"b": {"x": i}, "n": [0] * 10, "pad": "p" * 130} for i in range(999)}}
    patch = {"o": {f"k{i}": {"b": {"y": i}} for i in range(666)}}  # 1 + 666 * 3 = 1,999 keys
    return base, patch


async def _pair(conn: db.Connection, params: dict[str, Any], rounds: int) -> tuple[float, float]:
    """p50 of the one-pass merge and of 002's, in alternating rounds (the first warms plans)."""
    await env.execute(conn, "merge_pair")
    await env.execute(conn, "merge_pair_set", params)
    ours: list[float] = []
    old: list[float] = []
    for i in range(rounds + 1):
        for name, times in (("merge_new", ours), ("merge_old", old)):
            started = time.perf_counter()
            await env.fetch(conn, name)
            if i:
                times.append(time.perf_counter() - started)
    return ms(p50(ours)), ms(p50(old))


async def run(ctx: Context) -> list[Figure]:
    rounds = 5 if ctx.quick else 15
    async with ctx.database(FAMILY) as bdb:
        conn = await bdb.connect()
        try:
            await env.execute(conn, "merge_old_function")
            base, patch = nested_keys(2000)
            nested = await _pair(conn, {"base": Jsonb(base), "patch": Jsonb(patch)}, rounds)
            base, patch = patch_at_the_limits()
            limits = await _pair(conn, {"base": Jsonb(base), "patch": Jsonb(patch)}, rounds)
            job = await jobs.enqueue(
                conn, bdb.conversation_id, jobs.JobRequest("p", {}), actor=bdb.actor,
                max_queued=10,
            )  # fmt: skip
            message_id = job["message_id"]
            await conversations.merge_metadata(conn, message_id, base, actor=bdb.actor)
            whole: list[float] = []
            for i in range(rounds + 1):
                started = time.perf_counter()
                merged = await conversations.merge_metadata(
                    conn, message_id, patch, actor=bdb.actor
                )
                if i:
                    whole.append(time.perf_counter() - started)
        finally:
            await conn.close()
    size = len(json.dumps(merged["extra_metadata"], separators=(",", ":")).encode())
    return [
        Figure(FAMILY, "deep merge, 2,000 nested keys p50", "SQL, one connection", "ms",
               *nested, BASELINE, (at_most(50.0, "ms"),),
               f"{{'a': {{k_i: {{...}}}}}} into the same shape; {rounds} rounds"),
        Figure(FAMILY, "deep merge, PATCH at the limits p50", f"into {size:,} bytes", "ms",
               *limits, BASELINE, (at_most(50.0, "ms"),),
               f"1,999 keys, 666 objects reaching into objects; {rounds} rounds"),
        Figure(FAMILY, "PATCH at the limits, whole statement p50", f"into {size:,} bytes", "ms",
               ms(p50(whole)), note="conversations.merge_metadata: row lock, merge, exact size "
               "check, write, and the merged message back to Python"),
    ]  # fmt: skip
