"""Issue 16 item 6 in Chromium: the prompt form counts characters as the server does (code
points: an emoji is one), a seed applies to one Generate unless "Keep seed" is on, the guidance
field is sent, an error is tied to its field (aria-invalid, described by the error, focused),
and an error that went stale (the server could not be reached) is gone once the page is back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from aiohttp import WSCloseCode

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, expect

from tests.browser.conftest import Server, Tab, User
from web.keys import CLIENTS

pytestmark = pytest.mark.browser
FOX = "\U0001f98a"


def conversation_of(page: Page) -> str:
    return parse_qs(urlparse(page.url).query)["c"][0]


async def generate(page: Page, user: User, prompt: str) -> dict[str, Any]:
    """Type a prompt, press Generate, and return the job the page created."""
    before = len(await user.api.jobs(conversation_of(page)))
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("article.card")).to_have_count(before + 1)
    jobs = await user.api.jobs(conversation_of(page))
    return jobs[-1]


async def test_the_counter_counts_code_points_like_the_server(
    make_user: Callable[[str], Awaitable[User]], open_page: Callable[..., Awaitable[Tab]]
) -> None:
    """1,100 foxes are 1,100 characters, kept whole and accepted (the textarea's maxlength once
    cut them to 1,000); 2,001 are one over: refused on the page, tied to the prompt, nothing
    sent."""
    user = await make_user("counter")
    page = (await open_page(user)).page
    prompt = page.get_by_label("Prompt", exact=True)
    counter = page.locator("#prompt-count")
    await prompt.fill(FOX * 1100)
    await expect(counter).to_have_text("1,100 / 2,000")
    job = await generate(page, user, FOX * 1100)
    assert job["prompt"] == FOX * 1100

    await prompt.fill(FOX * 2001)
    await expect(counter).to_have_text("2,001 / 2,000 · 1 over")
    await page.get_by_role("button", name="Generate").click()
    error = page.locator("#form-error")
    await expect(error).to_have_text("The prompt is 1 character over the limit of 2,000.")
    await expect(prompt).to_have_attribute("aria-invalid", "true")
    await expect(prompt).to_have_attribute("aria-describedby", "prompt-count form-error")
    await expect(prompt).to_be_focused()
    assert len(await user.api.jobs(conversation_of(page))) == 1
    await prompt.press("Backspace")  # fixing it clears the error
    await expect(error).to_be_hidden()
    await expect(prompt).not_to_have_attribute("aria-invalid", "true")
    await expect(prompt).to_have_attribute("aria-describedby", "prompt-count")


async def test_a_seed_is_used_once_unless_kept_and_guidance_is_sent(
    make_user: Callable[[str], Awaitable[User]], open_page: Callable[..., Awaitable[Tab]]
) -> None:
    user = await make_user("seeds")
    page = (await open_page(user)).page
    await page.locator("#advanced summary").click()
    seed = page.get_by_label("Seed", exact=True)
    await seed.fill("42")
    await page.get_by_label("Guidance").fill("3.5")
    await page.locator("#advanced summary").click()  # closed, it still says what is set
    await expect(page.locator(".advanced-summary")).to_have_text("seed 42, once · guidance 3.5")
    first = await generate(page, user, "a lighthouse")
    assert first["params"]["seed"] == 42
    assert first["params"]["guidance_scale"] == 3.5
    await expect(seed).to_have_value("")  # not silently 42 again: the next one is fresh
    second = await generate(page, user, "a lighthouse")
    assert second["params"]["seed"] != 42

    await page.locator("#advanced summary").click()
    await page.get_by_label("Keep seed").check()
    third = await generate(page, user, "a lighthouse")  # no seed given: the server picks one
    await expect(seed).to_have_value(str(third["params"]["seed"]))  # ... and it is kept
    fourth = await generate(page, user, "a lighthouse, again")
    assert fourth["params"]["seed"] == third["params"]["seed"]


async def test_errors_are_tied_to_their_field_the_servers_too(
    make_user: Callable[[str], Awaitable[User]], open_page: Callable[..., Awaitable[Tab]]
) -> None:
    """A value the page can check (steps 0) and one only the server refuses (a NUL in the
    prompt): each error marks its field invalid, describes it and takes the focus there, the
    closed Advanced section opening for its field."""
    user = await make_user("field-errors")
    page = (await open_page(user)).page
    await page.get_by_label("Prompt", exact=True).fill("a harbour")
    await page.locator("#advanced summary").click()
    steps = page.get_by_label("Steps")
    await steps.fill("0")
    await page.locator("#advanced summary").click()
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#form-error")).to_have_text(
        "Steps must be a whole number from 1 to 150."
    )
    await expect(page.locator("#advanced")).to_have_attribute("open", "")
    await expect(steps).to_have_attribute("aria-invalid", "true")
    await expect(steps).to_have_attribute("aria-describedby", "form-error")
    await expect(steps).to_be_focused()
    await steps.fill("")

    prompt = page.get_by_label("Prompt", exact=True)
    await prompt.fill("a harbour\x00 at night")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#form-error")).to_have_text("prompt must not contain NUL characters")
    await expect(prompt).to_have_attribute("aria-invalid", "true")
    await expect(prompt).to_be_focused()
    await expect(steps).not_to_have_attribute("aria-invalid", "true")
    assert await user.api.jobs(conversation_of(page)) == []


async def test_an_error_that_went_stale_is_cleared_on_reconnect(
    make_user: Callable[[str], Awaitable[User]],
    open_page: Callable[..., Awaitable[Tab]],
    server: Server,
) -> None:
    user = await make_user("stale-error")
    tab = await open_page(user)
    page = tab.page
    await page.get_by_label("Prompt", exact=True).fill("a windmill")
    await tab.context.set_offline(True)
    await page.get_by_role("button", name="Generate").click()
    error = page.locator("#form-error")
    await expect(error).to_have_text("The server cannot be reached.")
    for client in list(server.app[CLIENTS]):  # the connection drops, as in the outage
        client.kill(WSCloseCode.SERVICE_RESTART, "dropped by the test")
    await expect(page.locator("#connection")).not_to_have_attribute("data-state", "live")
    await tab.context.set_offline(False)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(error).to_be_hidden()
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value("a windmill")
