"""Issue 16 item 7 in Chromium: a finished image opens a full-size view (mouse and keyboard,
Escape closes it and the focus comes back; a portrait image is shown whole), "Use these
settings" and "Copy seed" on finished cards while failures keep Retry, long prompts expand,
and conversations are titled from their first prompt, renamed and deleted from the list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, expect

from tests.browser.conftest import Server, Tab, User, Workers
from tests.browser.test_page_a11y import axe_everywhere, open_with_axe

pytestmark = pytest.mark.browser


def conversation_of(page: Page) -> str:
    return parse_qs(urlparse(page.url).query)["c"][0]


def card(page: Page, job_id: str) -> Any:
    return page.locator(f'article.card[data-job-id="{job_id}"]')


async def test_a_finished_image_opens_whole_and_closes_back_to_its_card(
    make_user: Callable[[str], Awaitable[User]],
    open_page: Callable[..., Awaitable[Tab]],
    workers: Workers,
) -> None:
    user = await make_user("viewer")
    page = (await open_page(user)).page
    job = await user.api.submit(conversation_of(page), "a tall tower", width=512, height=768)
    workers.start(delay=0.2)
    done = card(page, job["job_id"])
    await expect(done).to_have_attribute("data-status", "complete")
    opener = done.get_by_role("button", name="View 'a tall tower' full size")
    await expect(opener).to_be_visible()
    # On the card, too, the portrait image is letterboxed, not cut.
    fit = await done.locator("img.card-image").evaluate("img => getComputedStyle(img).objectFit")
    assert fit == "contain"

    dialog = page.locator("#lightbox")
    for how in ("click", "keyboard"):
        if how == "click":
            await opener.click()
        else:
            await opener.focus()
            await page.keyboard.press("Enter")
        await expect(dialog).to_be_visible()
        await expect(dialog.locator(".lightbox-caption")).to_have_text("a tall tower")
        box = await dialog.locator("img").evaluate(
            """img => new Promise((done) => {
              const measure = () => { const r = img.getBoundingClientRect();
                done([img.naturalWidth, img.naturalHeight, r.width, r.height,
                      innerWidth, innerHeight]); };
              img.complete && img.naturalWidth ? measure() : img.addEventListener("load", measure);
            })"""
        )
        natural_w, natural_h, shown_w, shown_h, view_w, view_h = box
        assert (natural_w, natural_h) == (512, 768)
        assert abs(shown_w / shown_h - 512 / 768) < 0.01, box  # its shape: nothing cropped
        assert shown_h <= view_h and shown_w <= view_w, box  # all of it on the screen
        await page.keyboard.press("Escape")
        await expect(dialog).to_be_hidden()
        await expect(opener).to_be_focused()


async def test_use_these_settings_and_copy_seed_on_finished_cards_retry_on_failed_ones(
    make_user: Callable[[str], Awaitable[User]],
    open_page: Callable[..., Awaitable[Tab]],
    workers: Workers,
) -> None:
    user = await make_user("reuser")
    tab = await open_page(user)
    page = tab.page
    await tab.context.grant_permissions(["clipboard-read", "clipboard-write"])
    conversation = conversation_of(page)
    params = {
        "negative_prompt": "blurry",
        "width": 512,
        "height": 768,
        "steps": 7,
        "guidance_scale": 4.5,
        "seed": 1234,
    }
    job = await user.api.submit(conversation, "a quiet lake", **params)
    failed = await user.api.submit(conversation, "a lake [fail]", max_attempts=1)
    workers.start(delay=0.2)
    done, broken = card(page, job["job_id"]), card(page, failed["job_id"])
    await expect(done).to_have_attribute("data-status", "complete")
    await expect(broken).to_have_attribute("data-status", "error")
    await expect(broken.get_by_role("button", name="Retry")).to_be_visible()
    await expect(broken.locator(".use-settings")).to_be_hidden()
    await expect(broken.locator(".copy-seed")).to_be_hidden()

    await done.get_by_role("button", name="Copy seed 'a quiet lake'").click()
    await expect(done.locator(".copy-seed")).to_have_text("Seed copied")
    assert await page.evaluate("navigator.clipboard.readText()") == "1234"

    await done.get_by_role("button", name="Use these settings 'a quiet lake'").click()
    prompt = page.get_by_label("Prompt", exact=True)
    await expect(prompt).to_have_value("a quiet lake")
    await expect(prompt).to_be_focused()
    await expect(page.get_by_label("Negative prompt", exact=True)).to_have_value("blurry")
    await expect(page.get_by_label("Size", exact=True)).to_have_value("512x768")
    await expect(page.get_by_label("Steps", exact=True)).to_have_value("7")
    await expect(page.get_by_label("Guidance", exact=True)).to_have_value("4.5")
    await expect(page.get_by_label("Seed", exact=True)).to_have_value("1234")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("article.card")).to_have_count(3)
    again = (await user.api.jobs(conversation))[-1]
    assert again["prompt"] == "a quiet lake"
    assert {key: again["params"][key] for key in params} == params


async def test_a_long_prompt_is_cut_and_expands_on_the_card(
    make_user: Callable[[str], Awaitable[User]], open_page: Callable[..., Awaitable[Tab]]
) -> None:
    user = await make_user("long-prompts")
    page = (await open_page(user)).page
    long_prompt = "a very detailed harbour scene at dusk with many boats " * 12
    long = await user.api.submit(conversation_of(page), long_prompt.strip())
    short = await user.api.submit(conversation_of(page), "a boat")
    await expect(card(page, short["job_id"]).locator(".prompt-toggle")).to_be_hidden()
    toggle = card(page, long["job_id"]).locator(".prompt-toggle")
    await expect(toggle).to_have_text("Show more")
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    text = card(page, long["job_id"]).locator(".card-prompt")
    cut = await text.evaluate("el => [el.clientHeight, el.scrollHeight]")
    assert cut[0] < cut[1], cut
    await toggle.click()
    await expect(toggle).to_have_text("Show less")
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    whole = await text.evaluate("el => [el.clientHeight, el.scrollHeight]")
    assert whole[0] >= whole[1] > cut[0], (cut, whole)


async def test_conversations_are_titled_by_their_first_prompt_renamed_and_deleted(
    make_user: Callable[[str], Awaitable[User]], open_page: Callable[..., Awaitable[Tab]]
) -> None:
    user = await make_user("titles")
    page = (await open_page(user)).page
    first = conversation_of(page)
    heading = page.locator("#conversation-title")
    link = page.locator(f'#conversation-list a[data-conversation-id="{first}"]')
    await page.get_by_label("Prompt", exact=True).fill("a red fox in the snow")
    await page.get_by_role("button", name="Generate").click()
    await expect(link.locator(".conversation-name")).to_have_text("a red fox in the snow")
    await expect(heading).to_have_text("a red fox in the snow")

    await page.get_by_role("button", name="Rename 'a red fox in the snow'").click()
    field = page.get_by_label("New name for 'a red fox in the snow'")
    await expect(field).to_be_focused()
    await field.fill("never saved")
    await field.press("Escape")  # keeps the old name
    rename = page.get_by_role("button", name="Rename 'a red fox in the snow'")
    await expect(rename).to_be_focused()
    await rename.click()
    await page.get_by_label("New name for 'a red fox in the snow'").fill("Foxes")
    await page.keyboard.press("Enter")
    await expect(link.locator(".conversation-name")).to_have_text("Foxes")
    await expect(heading).to_have_text("Foxes")
    assert [c["title"] for c in await user.api.conversations()] == ["Foxes"]

    page.on("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Delete 'Foxes'").click()
    await expect(link).to_have_count(0)
    await expect(page).not_to_have_url(f"/?c={first}")  # another conversation is open
    await user.api.call("GET", f"/api/conversations/{first}", expect=404)
    assert first not in [c["id"] for c in await user.api.conversations()]


async def test_axe_finds_nothing_in_the_full_size_view_a_field_error_or_a_rename(
    chromium: Any,
    server: Server,
    make_user: Callable[[str], Awaitable[User]],
    workers: Workers,
) -> None:
    """The states this file adds to the page, checked as test_page_a11y checks the others (light
    and dark, desktop and phone)."""
    user = await make_user("results-axe")
    page = await open_with_axe(chromium, server.base_url, user.token)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await user.api.submit(conversation_of(page), "a tall tower", width=512, height=768)
    workers.start(delay=0.2)
    opener = page.get_by_role("button", name="View 'a tall tower' full size")
    await opener.click()
    await expect(page.locator("#lightbox")).to_be_visible()
    problems = await axe_everywhere(page, "full-size view")
    await page.keyboard.press("Escape")
    await page.get_by_label("Prompt", exact=True).fill("a harbour")
    await page.locator("#advanced summary").click()
    await page.get_by_label("Steps", exact=True).fill("0")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.get_by_label("Steps", exact=True)).to_have_attribute("aria-invalid", "true")
    await page.locator(".conversation-rename").click()  # the field's error stays meanwhile
    await expect(page.locator(".conversation-title-input")).to_be_focused()
    problems += await axe_everywhere(page, "field error, renaming")
    await page.context.close()
    assert not problems, problems
