"""Users and API tokens. A token is shown once; the database keeps only its SHA-256 digest."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection
from datetime import datetime

from . import db
from .actors import Actor


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


async def authenticate(conn: db.Db, token: str) -> Actor | None:
    """The actor a valid (unexpired, unrevoked) token belongs to, else None."""
    if not token or len(token) > 200:
        return None
    wanted = digest(token)
    row = await db.fetch_one(conn, "token_authenticate", {"token_hash": wanted})
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), wanted):
        return None
    return Actor(user_id=row["user_id"], name=row["name"], is_admin=row["is_admin"])


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
