"""Fixtures the web and WebSocket tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.web_support import HandWorker


@pytest.fixture
async def worker(database_url: str) -> AsyncIterator[HandWorker]:
    """A worker driven by hand: the test decides when a job is claimed and how it ends."""
    hand = await HandWorker(database_url).start()
    yield hand
    await hand.close()
