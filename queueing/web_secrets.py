"""Secrets every web server of one database shares, stored once in web_secrets."""

from __future__ import annotations

import secrets

from . import db

SECRET_BYTES = 32


async def shared_secret(conn: db.Db, name: str) -> bytes:
    """The secret stored under `name`; the first caller stores a random one, so every server
    that asks later (or at the same time) gets the same bytes."""
    row = await db.fetch_one(
        conn,
        "web_secret_get_or_create",
        {"name": name, "secret": secrets.token_bytes(SECRET_BYTES)},
    )
    assert row is not None
    return bytes(row["secret"])
