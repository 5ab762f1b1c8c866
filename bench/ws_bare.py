"""The fan-out ceiling: a bare aiohttp server that sends one text to every open WebSocket.

`python -m bench.ws_bare PORT`. GET /ws accepts and holds a socket; POST /broadcast sends the
request body, as one text frame, to every socket in turn (no database, no routing, no outbox),
then answers with the count. GET / answers 200 once the server is up.
"""

from __future__ import annotations

import sys

from aiohttp import web

from harness.processes import raise_open_files_limit

SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("sockets")


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    sockets = request.app[SOCKETS]
    sockets.add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        sockets.discard(ws)
    return ws


async def broadcast(request: web.Request) -> web.Response:
    text = await request.text()
    registered = request.app[SOCKETS]
    sockets = list(registered)  # a copy: sockets may close while we send
    for ws in sockets:
        if not ws.closed:
            await ws.send_str(text)
    return web.Response(text=str(len(sockets)))


def main() -> None:
    raise_open_files_limit()
    app = web.Application()
    app[SOCKETS] = set()
    app.router.add_get("/", hello)
    app.router.add_get("/ws", websocket)
    app.router.add_post("/broadcast", broadcast)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
