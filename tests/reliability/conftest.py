"""Fixtures of the reliability suite: a seeded random source that says how to replay it, and a
database shared by the tests of one module (cloned from the session's migrated template)."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator

import pytest

from harness import databases
from queueing import db

SEED_ENV = "GPUQUEUE_RELIABILITY_SEED"


def seeded(name: str) -> tuple[random.Random, int]:
    """A random source for one scenario: GPUQUEUE_RELIABILITY_SEED replays a run exactly (as far
    as the scheduler allows); otherwise a fresh seed, printed so a failure can be replayed."""
    given = os.environ.get(SEED_ENV)
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    print(f"{name}: {SEED_ENV}={seed}")
    return random.Random(seed), seed


@pytest.fixture(scope="module")
def module_database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A database for every test of the module: they add rows, none relies on an empty one."""
    name = databases.unique_name("gq_rel")
    url = databases.create_database(pg_admin_url, name, template=template_db)
    yield url
    databases.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
async def module_pool(module_database_url: str) -> AsyncIterator[db.Pool]:
    async with db.make_pool(module_database_url, "gpuqueue-test", min_size=1, max_size=10) as p:
        yield p
