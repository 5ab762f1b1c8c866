"""Users and API tokens. A token is shown once; the database keeps only its SHA-256 digest.

A web process checks its requests' tokens through one TokenLookups: the lookups that come while
one runs go together in the next, one statement for all (queueing/coalesce.py). There is still
no cache: each request is checked against the tokens as they are at its own round, so a revoked
token stops working at once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection
from datetime import datetime
from functools import partial

from . import db
from .actors import Actor
from .coalesce import Coalescer


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


async def create_token(
    conn: db.Db, user: str, *, admin: bool = False, expires_at: datetime | None = None
) -> str:
    """Create the user if needed and a new token for it; return the token in clear."""
    row = await db.fetch_one(conn, "user_upsert", {"name": user, "is_admin": admin})
    assert row is not None
    token = "gq_" + secrets.token_urlsafe(32)
    await db.fetch_one(
        conn,
        "token_insert",
        {"user_id": row["id"], "token_hash": digest(token), "expires_at": expires_at},
    )
    return token


def _wanted(token: str) -> bytes | None:
    return None if not token or len(token) > 200 else digest(token)


def _actor(row: db.Row | None, wanted: bytes) -> Actor | None:
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), wanted):
        return None
    return Actor(user_id=row["user_id"], name=row["name"], is_admin=row["is_admin"])


async def authenticate(conn: db.Db, token: str) -> Actor | None:
    """The actor a valid (unexpired, unrevoked) token belongs to, else None."""
    wanted = _wanted(token)
    if wanted is None:
        return None
    return _actor((await _lookup(conn, [wanted]))[0], wanted)


class TokenLookups:
    """authenticate for a web process's concurrent requests: one statement a round."""

    def __init__(self, pool: db.Pool) -> None:
        self._rounds: Coalescer[bytes, db.Row | None] = Coalescer(
            partial(_lookup, pool), "gpuqueue-auth"
        )

    async def authenticate(self, token: str) -> Actor | None:
        """As `authenticate`, checked at the round this call goes in."""
        wanted = _wanted(token)
        if wanted is None:
            return None
        return _actor(await self._rounds.call(wanted), wanted)


async def _lookup(conn: db.Db, wanted: list[bytes]) -> list[db.Row | None]:
    """Each digest's valid token row (None: unknown, expired or revoked), in one statement."""
    rows = await db.fetch_all(conn, "tokens_authenticate", {"token_hashes": list(set(wanted))})
    found = {bytes(row["token_hash"]): row for row in rows}
    return [found.get(digest_) for digest_ in wanted]


async def still_valid(conn: db.Db, digests: Collection[bytes]) -> set[bytes]:
    """Which of these token digests are still valid, in one query however many there are."""
    if not digests:
        return set()
    rows = await db.fetch_all(conn, "tokens_still_valid", {"token_hashes": list(digests)})
    return {bytes(row["token_hash"]) for row in rows}


async def revoke_token(conn: db.Db, token: str) -> bool:
    return await db.fetch_one(conn, "token_revoke", {"token_hash": digest(token)}) is not None


async def revoke_user_tokens(conn: db.Db, user: str) -> int:
    return len(await db.fetch_all(conn, "token_revoke_user", {"name": user}))
