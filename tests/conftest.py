"""Fixtures: a real PostgreSQL, one migrated template per session, one copy per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from harness import databases
from queueing import db, tokens
from queueing.actors import Actor
from queueing.conversations import create_conversation


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return databases.admin_url()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    name = databases.migrated_template(pg_admin_url)
    yield name
    databases.drop_database(pg_admin_url, name)


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A database of this test's own, cloned from the migrated template, dropped afterwards."""
    name = databases.unique_name()
    url = databases.create_database(pg_admin_url, name, template=template_db)
    yield url
    databases.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def module_database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A database for every test of the module: they add rows, none relies on an empty one."""
    name = databases.unique_name("gq_mod")
    url = databases.create_database(pg_admin_url, name, template=template_db)
    yield url
    databases.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
async def module_pool(module_database_url: str) -> AsyncIterator[db.Pool]:
    async with db.make_pool(module_database_url, "gpuqueue-test", min_size=1, max_size=10) as p:
        yield p


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[db.Pool]:
    async with db.make_pool(database_url, "gpuqueue-test", min_size=2, max_size=30) as p:
        yield p


@pytest.fixture
async def alice(pool: db.Pool) -> Actor:
    await tokens.create_token(pool, "alice")
    actor = await tokens.authenticate(pool, await tokens.create_token(pool, "alice"))
    assert actor is not None
    return actor


@pytest.fixture
async def conversation_id(pool: db.Pool, alice: Actor) -> str:
    return str((await create_conversation(pool, actor=alice, title="test"))["id"])
