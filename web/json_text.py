"""The one JSON encoder of the web package: HTTP bodies, error bodies and WebSocket frames.

Compact and UTF-8 as is (no \\u escapes), so a frame serialised once is as small as it can be
for every socket; rows' UUIDs, times and numerics become their JSON spelling here.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID


def _default(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any, *, ascii_only: bool = False) -> str:
    """`ascii_only` for text that may echo a client's input: a lone surrogate it sent (valid in
    JSON's \\u escapes, not in UTF-8) is then written as an escape, never raised at send time.
    Everything else comes from the database, which holds no such character."""
    return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=ascii_only)
