"""A shared read (queueing/cached.py): one value per ttl, read again sooner once outdated, but
never more often than min_age_s."""

from __future__ import annotations

from typing import Any

from queueing.cached import Cached


def counting_cache(*, min_age_s: float) -> Cached[int]:
    reads: list[Any] = []

    async def read(conn: Any) -> int:
        reads.append(conn)
        return len(reads)

    return Cached(read, ttl_s=60.0, min_age_s=min_age_s)


async def test_an_outdated_value_is_read_again_and_then_shared() -> None:
    cache = counting_cache(min_age_s=0.0)
    assert [await cache.get(None), await cache.get(None)] == [1, 1]
    cache.outdated()
    assert [await cache.get(None), await cache.get(None)] == [2, 2]


async def test_an_outdated_value_younger_than_min_age_is_still_shared() -> None:
    """The rate bound: a stream of changes (every job start of a fleet) costs at most one
    read per min_age_s."""
    cache = counting_cache(min_age_s=60.0)
    assert await cache.get(None) == 1
    cache.outdated()
    assert await cache.get(None) == 1
