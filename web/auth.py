"""Who is asking. A token comes as `Authorization: Bearer <token>`; browsers cannot set headers on
a WebSocket or an <img>, so /ws and the image endpoint also take `?token=`.

There is no cache: every request costs one indexed lookup, and a revoked token stops working at
once, on the next request or the next WebSocket message.
"""

from __future__ import annotations

from aiohttp import web

from queueing import db, tokens
from queueing.actors import Actor

from .errors import ApiError

_SCHEME = "bearer "


def header_token(request: web.BaseRequest) -> str | None:
    value = request.headers.get("Authorization", "")
    if value[: len(_SCHEME)].lower() != _SCHEME:
        return None
    return value[len(_SCHEME) :].strip() or None


def request_token(request: web.BaseRequest, *, allow_query: bool = False) -> str | None:
    token = header_token(request)
    if token is None and allow_query:
        token = request.query.get("token") or None
    return token


async def authenticate(pool: db.Db, token: str | None) -> Actor:
    """The token's actor, or 401."""
    if token is None:
        raise ApiError(401, "unauthorized", "send your token as Authorization: Bearer <token>")
    actor = await tokens.authenticate(pool, token)
    if actor is None:
        raise ApiError(401, "unauthorized", "the token is not valid (unknown, expired or revoked)")
    return actor
