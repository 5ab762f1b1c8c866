"""Who is asking. A token comes as `Authorization: Bearer <token>`; browsers cannot set headers on
a WebSocket, so /ws also takes `?token=` (an <img> gets a signed link instead: web/image_links.py).

There is no cache: every request is looked up (the process's concurrent requests in one statement,
queueing/tokens.py TokenLookups), and a revoked token stops working at once, on the next request
or WebSocket message, and within seconds on a quiet WebSocket.
"""

from __future__ import annotations

from aiohttp import web

from queueing import tokens
from queueing.actors import Actor

from .errors import ApiError

_SCHEME = "bearer "


def header_token(request: web.BaseRequest) -> str | None:
    value = request.headers.get("Authorization", "")
    if value[: len(_SCHEME)].lower() != _SCHEME:
        return None
    return value[len(_SCHEME) :].strip() or None


def socket_token(request: web.BaseRequest) -> str | None:
    """The header's token, else ?token=: only /ws takes one in its URL."""
    return header_token(request) or request.query.get("token") or None


async def authenticate(lookups: tokens.TokenLookups, token: str | None) -> Actor:
    """The token's actor, or 401."""
    if token is None:
        raise ApiError(401, "unauthorized", "send your token as Authorization: Bearer <token>")
    actor = await lookups.authenticate(token)
    if actor is None:
        raise ApiError(401, "unauthorized", "the token is not valid (unknown, expired or revoked)")
    return actor
