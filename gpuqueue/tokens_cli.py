"""`gpuqueue token create|revoke`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from queueing import db, tokens


async def run_token_command(args: argparse.Namespace, url: str) -> int:
    conn = await db.connect(url, "gpuqueue-token")
    try:
        if args.token_command == "create":
            expires = (
                datetime.now(UTC) + timedelta(seconds=args.expires_in)
                if args.expires_in is not None
                else None
            )
            print(await tokens.create_token(conn, args.user, admin=args.admin, expires_at=expires))
            return 0
        if args.user:
            count = await tokens.revoke_user_tokens(conn, args.user)
            print(f"revoked {count} token(s) of {args.user}", file=sys.stderr)
            return 0
        if await tokens.revoke_token(conn, args.token):
            print("revoked", file=sys.stderr)
            return 0
        print("no such active token", file=sys.stderr)
        return 1
    finally:
        await conn.close()
