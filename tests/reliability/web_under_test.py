"""The web server exactly as `gpuqueue web` builds and serves it, plus one test-only route that
lets a load test look inside without guessing from outside:

    python -m tests.reliability.web_under_test DATABASE_URL PORT

GET /_reliability/state runs a full garbage collection and glibc's malloc_trim(0), so the VmRSS
the test then reads from /proc is the memory the process really holds rather than the
allocator's free lists, and answers the live asyncio tasks (by name) and how many WebSocket
clients the app still knows (a leaked subscription keeps its client alive). Bound to 127.0.0.1.
InspectableWeb starts it as a child of the test.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from harness.commands import WebChild
from queueing.config import Settings
from web.app import create_app
from web.keys import BROADCASTER, CLIENTS
from web.live.placing import Placing
from web.server import AccessLogger


def _trim() -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _queue_order_objects(placing: Placing) -> set[int]:
    held: set[int] = set()
    for queued in placing.order._jobs.values():
        keys = queued.keys
        held.update((id(queued), id(queued.key), id(queued.start_tag), id(keys)))
        for uuid in (keys.job_id, keys.conversation_id):
            held.update((id(uuid), id(uuid.int)))
    held.update(id(place) for place in placing._recent.values())
    return held


async def state(request: web.Request) -> web.Response:
    gc.collect()
    trimmed = _trim()
    tasks = Counter(t.get_name().rstrip("0123456789-") for t in asyncio.all_tasks())
    # What the queue order holds is one entry per queued job (and a bounded window of recent
    # places), by design: counted apart, so what grows with clients stands out.
    held = _queue_order_objects(request.app[BROADCASTER].placing)
    objects = Counter(f"{getattr(type(o), '__module__', '?')}.{type(o).__qualname__}"
                      for o in gc.get_objects() if id(o) not in held)  # fmt: skip
    return web.json_response({
        "tasks": sum(tasks.values()),
        "task_names": dict(tasks),
        "clients": len(request.app[CLIENTS]),
        "trimmed": trimmed,
        "objects": dict(objects),
        "queue_order_objects": len(held),
        "heap": sys.getallocatedblocks(),
    })  # fmt: skip


def main(url: str, port: int) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    app = create_app(Settings.from_env(), url)
    app.router.add_get("/_reliability/state", state)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log_class=AccessLogger,
        access_log=logging.getLogger("gpuqueue.access"), shutdown_timeout=5.0, print=None,
    )  # fmt: skip


class InspectableWeb(WebChild):
    """This module as a child of the test: a WebChild with the state route (and no flags: `args`
    are not taken)."""

    def command(self, database_url: str, port: int, args: Sequence[str]) -> list[str]:
        assert not args, "web_under_test takes no flags"
        return ["-m", "tests.reliability.web_under_test", database_url, str(port)]

    async def state(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """The live tasks and clients, after a GC and malloc_trim."""
        async with session.get(f"{self.base_url}/_reliability/state") as response:
            assert response.status == 200, await response.text()
            found: dict[str, Any] = await response.json()
            return found


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
