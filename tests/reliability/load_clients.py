"""Many WebSocket clients in a process of their own, so that they do not share the server's loop
(or the test's). Driven over stdin/stdout by tests/reliability/test_load.py:

    python -m tests.reliability.load_clients PLAN.json RESULT.json

PLAN: {"base": "http://127.0.0.1:PORT", "clients": [{token, conversation_id, since_seq?}]}.
It connects every client and subscribes it (since_seq 0 unless given), prints
"ready <seconds>", records every frame with the wall-clock time it arrived, and on the stdin line
"drain <json {conversation_id: last_seq}>" lets each client read until it has that seq, proves
with a ping that nothing else is on its way, closes every socket, writes RESULT, prints "done".
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType

CONNECT_CONCURRENCY = 50
TRANSITIONS = frozenset({"queued", "processing", "complete", "error", "canceled"})


@dataclass
class LoadClient:
    token: str
    conversation_id: str
    since_seq: int = 0
    seqs: list[int] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    positions: int = 0
    errors: list[Any] = field(default_factory=list)
    close_code: int | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    pong: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def connect(self, session: aiohttp.ClientSession, base: str) -> None:
        self.ws = await session.ws_connect(
            f"{base}/ws", params={"token": self.token}, heartbeat=None,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        )  # fmt: skip
        await self.ws.send_json(
            {
                "op": "subscribe",
                "conversation_id": self.conversation_id,
                "since_seq": self.since_seq,
            }
        )

    async def read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            now = time.time()
            if msg.type is not WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            kind = frame.get("type")
            if kind in TRANSITIONS and "job_id" in frame:
                self.seqs.append(int(frame["seq"]))
                self.received_at.append(now)
                async with self.progress:
                    self.progress.notify_all()
            elif kind == "position":
                self.positions += 1
            elif kind == "subscribed":
                self.subscribed.set()
            elif kind == "pong":
                self.pong.set()
            else:
                self.errors.append(frame)
        self.close_code = self.ws.close_code
        self.subscribed.set()
        self.pong.set()
        async with self.progress:
            self.progress.notify_all()

    async def drain(self, last_seq: int) -> None:
        """Wait until the last event is in, then ping: its pong comes after anything queued."""
        assert self.ws is not None
        async with self.progress:
            await self.progress.wait_for(lambda: self._seen() >= last_seq or self._closed())
        if not self.ws.closed:
            await self.ws.send_json({"op": "ping"})
            await self.pong.wait()
        await self.ws.close()

    def _seen(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def _closed(self) -> bool:
        return self.ws is None or self.ws.closed

    def result(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id, "seqs": self.seqs,
            "received_at": self.received_at, "positions": self.positions,
            "errors": self.errors[:5], "close_code": self.close_code,
        }  # fmt: skip


async def follow(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Connect and subscribe every client, then follow until told to drain; their records."""
    base = plan["base"]
    clients = [LoadClient(c["token"], c["conversation_id"], c.get("since_seq", 0))
               for c in plan["clients"]]  # fmt: skip
    started = time.monotonic()
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        readers: list[asyncio.Task[None]] = []

        async def start(client: LoadClient) -> None:
            async with limit:
                await client.connect(session, base)
                readers.append(asyncio.create_task(client.read()))
                await client.subscribed.wait()

        await asyncio.gather(*(start(c) for c in clients))
        print(f"ready {time.monotonic() - started:.2f}", flush=True)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command, _, payload = line.strip().partition(" ")
        assert command == "drain", line
        last = json.loads(payload)
        await asyncio.wait_for(
            asyncio.gather(*(c.drain(last.get(c.conversation_id, 0)) for c in clients)), 120
        )
        await asyncio.gather(*readers)
    return [c.result() for c in clients]


def main(plan_path: str, result_path: str) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = asyncio.run(follow(json.loads(Path(plan_path).read_text())))
    Path(result_path).write_text(json.dumps(results))
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
