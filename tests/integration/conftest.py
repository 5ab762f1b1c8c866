"""Fixtures the web and WebSocket tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from harness.commands import WebChild
from tests.integration.web_support import HandWorker


@pytest.fixture(scope="module")
async def web(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WebChild]:
    """A `gpuqueue web` process on the module's database, shared by the module's tests."""
    process = WebChild(module_database_url, tmp_path_factory.mktemp("web") / "web.log")
    try:
        await process.ready()
        yield process
    finally:
        await process.stop()


@pytest.fixture
async def worker(database_url: str) -> AsyncIterator[HandWorker]:
    """A worker driven by hand: the test decides when a job is claimed and how it ends."""
    hand = await HandWorker(database_url).start()
    yield hand
    await hand.close()
