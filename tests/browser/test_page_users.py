"""Two people on the same server: each page shows only its own conversations and jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, expect

pytestmark = pytest.mark.browser


def conversation_of(page: Page) -> str:
    return parse_qs(urlparse(page.url).query)["c"][0]


async def submit_from_page(page: Page, prompt: str) -> None:
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    await page.get_by_role("button", name="Generate").click()
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value("")


async def test_two_users_never_see_each_others_jobs(
    make_user: Any, open_page: Any, workers: Any
) -> None:
    """A user sees and changes only its own conversations and jobs (contract: HTTP API), on
    the page and over the WebSocket: two browsers of two users share one queue (positions
    count the other's jobs) but never show the other's cards, and a link to the other's
    conversation shows nothing of it."""
    alice, bob = await make_user("alice"), await make_user("bob")
    alice_tab, bob_tab = await open_page(alice), await open_page(bob)
    a, b = alice_tab.page, bob_tab.page
    alice_conversation, bob_conversation = conversation_of(a), conversation_of(b)
    assert alice_conversation != bob_conversation

    await submit_from_page(b, "bob's secret garden")
    await submit_from_page(a, "alice's private castle")
    await submit_from_page(a, "alice's second castle")
    # One queue for everyone: Bob's job is ahead of Alice's, and her page says so (R4.3)
    # without showing it.
    await expect(a.locator(".card-status")).to_contain_text(["3rd in line", "2nd in line"])
    await expect(b.locator(".card-status")).to_contain_text(["1st in line"])
    workers.start(delay=0.3)
    await expect(a.locator('article.card[data-status="complete"]')).to_have_count(2)
    await expect(b.locator('article.card[data-status="complete"]')).to_have_count(1)
    await expect(a.locator(".card-prompt")).to_have_text(
        ["alice's second castle", "alice's private castle"]
    )
    await expect(b.locator(".card-prompt")).to_have_text(["bob's secret garden"])
    assert await b.evaluate("window.gpuqueue.store.size") == 1
    await expect(a.locator(".conversation-link")).to_have_count(1)
    await expect(b.locator(".conversation-link")).to_have_count(1)

    # Bob follows a link to Alice's conversation: he gets told, and lands in his own.
    await b.goto(f"{urlparse(b.url)._replace(query='').geturl()}?c={alice_conversation}")
    await expect(b.locator("#notice")).to_contain_text("not yours")
    await expect(b.locator("#connection")).to_have_attribute("data-state", "live")
    assert conversation_of(b) == bob_conversation
    await expect(b.locator(".card-prompt")).to_have_text(["bob's secret garden"])
    assert "castle" not in await b.locator("body").inner_text()


async def test_the_page_says_who_is_signed_in(make_user: Any, open_page: Any) -> None:
    """The name is GET /api/me's `user`, as the server sends it."""
    tab = await open_page(await make_user("carol"))
    await expect(tab.page.locator("#whoami")).to_have_text("Signed in as carol")
