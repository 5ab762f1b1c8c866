"""A database read shared by every caller of a busy second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from . import db

T = TypeVar("T")


class Cached(Generic[T]):
    """`read(conn)`'s result, re-read at most once per `ttl_s`: one query serves every request
    of a busy second, and concurrent callers share the one refresh in flight. A value known to
    be out of date (`outdated`) is re-read sooner, but not more than once per `min_age_s`."""

    def __init__(
        self, read: Callable[[db.Db], Awaitable[T]], ttl_s: float = 1.0, min_age_s: float = 0.1
    ) -> None:
        self.ttl_s = ttl_s
        self.min_age_s = min_age_s
        self._read = read
        self._value: T | None = None
        self._read_at = 0.0
        self._outdated_at = 0.0
        self._lock = asyncio.Lock()

    def outdated(self) -> None:
        """What the value is read from changed after this moment."""
        self._outdated_at = time.monotonic()

    def _fresh(self, max_age_s: float) -> T | None:
        if self._value is None:
            return None
        age = time.monotonic() - self._read_at
        if self._outdated_at > self._read_at:  # read before the change
            max_age_s = min(max_age_s, self.min_age_s)
        return self._value if age < max_age_s else None

    async def get(self, conn: db.Db, *, max_age_s: float | None = None) -> T:
        """The cached value while younger than `max_age_s` (default: the ttl), else a new one."""
        max_age = self.ttl_s if max_age_s is None else max_age_s
        value = self._fresh(max_age)
        if value is not None:
            return value
        async with self._lock:
            value = self._fresh(max_age)
            if value is not None:
                return value
            started = time.monotonic()
            value = await self._read(conn)
            self._value, self._read_at = value, started
            return value
