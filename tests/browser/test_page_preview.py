"""Issue 16 item 9 in Chromium: while a job runs, its card draws the preview images the worker
sends (the stub's placeholder: the final gradient filling in from the top), small and of the
job's shape; once the job is done, the image takes their place."""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, expect

from tests.browser.conftest import Tab, User, Workers

pytestmark = pytest.mark.browser
PNG_URL = "data:image/png;base64,"


def conversation_of(page: Page) -> str:
    return parse_qs(urlparse(page.url).query)["c"][0]


def png_size(data_url: str) -> tuple[int, int]:
    data = base64.b64decode(data_url.removeprefix(PNG_URL))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_a_running_jobs_card_draws_its_previews_then_the_image(
    make_user: Callable[[str], Awaitable[User]],
    open_page: Callable[..., Awaitable[Tab]],
    workers: Workers,
) -> None:
    user = await make_user("preview-watcher")
    tab = await open_page(user)
    page = tab.page
    job = await user.api.submit(
        conversation_of(page), "a portrait of a heron", width=512, height=768, steps=12
    )
    workers.start(delay=2.0)
    card = page.locator(f'article.card[data-job-id="{job["job_id"]}"]')
    preview = card.locator("img.card-preview")
    await expect(card).to_have_attribute("data-status", "processing")
    await expect(preview).to_be_visible()
    first = await preview.get_attribute("src") or ""
    assert first.startswith(PNG_URL), first[:40]
    assert png_size(first) == (85, 128)  # 512 x 768 shrunk to fit 128 px, its shape kept
    # A later preview replaces it while the job still runs: the placeholder fills in.
    await page.wait_for_function(
        """([id, first]) => {
          const card = document.querySelector(`article.card[data-job-id="${id}"]`);
          const img = card.querySelector("img.card-preview");
          return card.dataset.status === "processing" && img !== null && img.src !== first;
        }""",
        arg=[job["job_id"], first],
    )
    await expect(card).to_have_attribute("data-status", "complete")
    await expect(card.locator("img.card-image")).to_be_visible()
    await expect(preview).to_have_count(0)  # the finished card holds the image alone
    assert await card.locator("img").count() == 1
