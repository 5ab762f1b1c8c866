"""The page in Chromium for two things of issue 10: a retry waiting out its backoff says
"retrying in N s", counting down, instead of claiming a place in line (item 13), and a finished
image is a plain <img> on its signed link, with no token in any image URL (item 10)."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, expect

from queueing import jobs
from tests.browser.conftest import Server, Tab, User
from tests.integration.web_support import HandWorker

pytestmark = pytest.mark.browser
RETRYING = re.compile(r"^retrying in (\d+) s$")


def conversation_of(page: Page) -> str:
    return parse_qs(urlparse(page.url).query)["c"][0]


def card(page: Page, job_id: str) -> Any:
    return page.locator(f'article.card[data-job-id="{job_id}"]')


async def countdown(page: Page, job_id: str) -> int:
    text = (await card(page, job_id).locator(".card-eta").text_content() or "").strip()
    found = RETRYING.match(text)
    assert found, text
    return int(found.group(1))


async def test_a_retry_waiting_out_its_backoff_counts_down_instead_of_being_next(
    server: Server,
    make_user: Callable[[str], Awaitable[User]],
    open_page: Callable[..., Awaitable[Tab]],
) -> None:
    """A job that failed and waits 30-60 s before its retry is alone in the queue (position 1),
    yet its card says "waiting to retry" and "retrying in N s", N its run_after less now and
    falling each second, with no "1st in line"; a reload (the snapshot) says the same."""
    user = await make_user("retry-waiter")
    page = (await open_page(user)).page
    job = await user.api.submit(conversation_of(page), "a fox that fails once")
    job_id = job["job_id"]
    await expect(card(page, job_id)).to_have_attribute("data-status", "queued")
    worker = await HandWorker(server.database_url).start()
    try:
        claim = await worker.claim()
        await expect(card(page, job_id)).to_have_attribute("data-status", "processing")
        assert worker.conn is not None
        backoff = jobs.Backoff(60, 60)  # waits 30-60 s (equal jitter)
        failed = await jobs.fail(
            worker.conn, claim, "CUDA out of memory", retryable=True, backoff=backoff
        )
        assert failed == "queued"
    finally:
        await worker.close()
    read = await user.api.job(job_id)
    assert read["queue_position"] == 1
    left_s = datetime.fromisoformat(read["run_after"]).timestamp() - time.time()
    assert left_s >= 25, read["run_after"]

    for attempt in ("live", "after a reload"):
        waiting = card(page, job_id)
        await expect(waiting.locator(".card-eta")).to_have_text(RETRYING)
        await expect(waiting.locator(".card-status")).to_contain_text("waiting to retry")
        assert "in line" not in await waiting.inner_text(), attempt
        first = await countdown(page, job_id)
        left_s = datetime.fromisoformat(read["run_after"]).timestamp() - time.time()
        assert abs(first - left_s) <= 2, (attempt, first, left_s)
        await expect(waiting.locator(".card-eta")).not_to_have_text(f"retrying in {first} s")
        assert await countdown(page, job_id) < first, attempt
        await page.reload()
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")


async def test_a_finished_image_is_a_plain_img_on_its_signed_link(
    server: Server,
    make_user: Callable[[str], Awaitable[User]],
    open_page: Callable[..., Awaitable[Tab]],
) -> None:
    """The card's <img src> is the job's signed image_url (no blob, no fetch with a header), the
    image decodes, the download link is a signed link too, and no request the page makes for an
    image carries a token, in its URL or a header."""
    user = await make_user("image-viewer")
    tab = await open_page(user)
    page = tab.page
    image_requests: list[tuple[str, dict[str, str]]] = []
    page.on(
        "request",
        lambda r: image_requests.append((r.url, r.headers)) if "/image" in r.url else None,
    )
    job = await user.api.submit(conversation_of(page), "a fox, finished")
    job_id = job["job_id"]
    worker = await HandWorker(server.database_url).start()
    try:
        await worker.complete(await worker.claim())
    finally:
        await worker.close()
    image = card(page, job_id).locator("img.card-image")
    await expect(image).to_be_visible()
    src = await image.get_attribute("src") or ""
    assert re.fullmatch(rf"/api/jobs/{job_id}/image\?exp=\d+&sig=[A-Za-z0-9_-]+", src), src
    assert await image.evaluate("img => img.complete && img.naturalWidth") == 8
    download = await card(page, job_id).locator("a.download").get_attribute("href") or ""
    assert download.startswith(f"/api/jobs/{job_id}/image?exp="), download
    assert image_requests, "the page asked for no image"
    for url, headers in image_requests:
        assert "token=" not in url and "authorization" not in headers, (url, headers)
