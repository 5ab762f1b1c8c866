"""GET /api/openapi.json: the OpenAPI 3.1 document of the HTTP API (contract: Operations).

The document is written by hand (web/openapi.json, shipped as package data) and checked against
the running server by Schemathesis (tests/integration/test_openapi.py), so it says what the
server does rather than what a generator guessed from the handlers.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

DOCUMENT = Path(__file__).resolve().with_name("openapi.json")


@cache
def _document() -> bytes:
    return DOCUMENT.read_bytes()


async def openapi(request: web.Request) -> web.Response:
    return web.Response(
        body=_document(), content_type="application/json", headers={"Cache-Control": "no-cache"}
    )
