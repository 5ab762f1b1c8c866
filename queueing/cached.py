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
    of a busy second, and concurrent callers share the one refresh in flight."""

    def __init__(self, read: Callable[[db.Db], Awaitable[T]], ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._read = read
        self._value: T | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self, max_age_s: float) -> T | None:
        if self._value is not None and time.monotonic() - self._read_at < max_age_s:
            return self._value
        return None

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
