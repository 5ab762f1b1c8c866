"""Many WebSocket clients in one process, driven over stdin/stdout (one JSON object a line).

Kept out of the server's process (and of the bench process, which triggers the events) so the
server is measured honestly. Commands:

    {"cmd": "connect", "url": WS_URL, "n": N, "subscribe": FRAME | null}
        -> {"connected": N, "seconds": S}      (with a frame: once every socket got "subscribed")
    {"cmd": "report", "marker": "TYPE:JOB_ID", "timeout": S}
        -> {"received": K, "first": T, "last": T, "sample": TEXT}
           once every socket has a message of that type naming that job (or at the timeout);
           T is time.monotonic(), which every process of the machine shares.
    {"cmd": "close"}  -> {"closed": N}
    {"cmd": "exit"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from harness.processes import raise_open_files_limit

MARK = '"job_id":"'
TYPE = '"type":"'
CONNECT_BATCH = 50


@dataclass
class Receipt:
    count: int = 0
    first: float = float("inf")
    last: float = 0.0
    sample: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Crowd:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.receipts: dict[str, Receipt] = {}
        self.expected = 0

    def _receipt(self, marker: str) -> Receipt:
        receipt = self.receipts.get(marker)
        if receipt is None:
            receipt = self.receipts[marker] = Receipt()
        return receipt

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, subscribed: asyncio.Event) -> None:
        seen: set[str] = set()
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            now = time.monotonic()
            text: str = msg.data
            at = text.find(MARK)
            if at >= 0:
                kind = text.find(TYPE)
                kind_end = text.find('"', kind + len(TYPE))
                job = text[at + len(MARK) : at + len(MARK) + 36]
                marker = f"{text[kind + len(TYPE) : kind_end] if kind >= 0 else ''}:{job}"
                if marker not in seen:
                    seen.add(marker)
                    receipt = self._receipt(marker)
                    receipt.count += 1
                    receipt.first = min(receipt.first, now)
                    receipt.last = max(receipt.last, now)
                    if not receipt.sample:
                        receipt.sample = text
                    if receipt.count >= self.expected:
                        receipt.done.set()
            elif '"type":"subscribed"' in text:
                subscribed.set()

    async def connect(self, url: str, n: int, frame: dict[str, Any] | None) -> dict[str, Any]:
        started = time.monotonic()
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        session = self.session
        self.expected = n
        waits: list[asyncio.Event] = []

        async def one() -> None:
            ws = await session.ws_connect(url, autoping=True, max_msg_size=0)
            subscribed = asyncio.Event()
            self.sockets.append(ws)
            self.readers.append(asyncio.create_task(self._read(ws, subscribed)))
            if frame is not None:
                await ws.send_str(json.dumps(frame))
                waits.append(subscribed)

        for start in range(0, n, CONNECT_BATCH):
            await asyncio.gather(*(one() for _ in range(min(CONNECT_BATCH, n - start))))
        for subscribed in waits:
            await asyncio.wait_for(subscribed.wait(), 60)
        return {"connected": len(self.sockets), "seconds": time.monotonic() - started}

    async def report(self, marker: str, limit_s: float) -> dict[str, Any]:
        receipt = self._receipt(marker)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receipt.done.wait(), limit_s)
        self.receipts.pop(marker, None)
        return {
            "received": receipt.count,
            "first": receipt.first,
            "last": receipt.last,
            "sample": receipt.sample,
        }

    async def close(self) -> dict[str, Any]:
        closed = len(self.sockets)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.sockets, self.readers, self.receipts = [], [], {}
        return {"closed": closed}


async def main() -> None:
    raise_open_files_limit()
    crowd = Crowd()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "connect":
            answer = await crowd.connect(command["url"], command["n"], command.get("subscribe"))
        elif cmd == "report":
            answer = await crowd.report(command["marker"], command.get("timeout", 10.0))
        elif cmd == "close":
            answer = await crowd.close()
        else:
            await crowd.close()
            if crowd.session is not None:
                await crowd.session.close()
            return
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
