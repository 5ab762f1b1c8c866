"""The page for people who use a screen reader, the keyboard only, a phone or dark mode
(contract "Conversations and the page", issue 16 items 3-5): axe-core finds nothing in any state,
one polite live region speaks of the person's own jobs by name, and a phone's closed drawer is
out of the way."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, ViewportSize, expect

pytestmark = pytest.mark.browser

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


def card(page: Page, job_id: str) -> Any:
    return page.locator(f'article.card[data-job-id="{job_id}"]')


async def open_with_axe(chromium: Any, base_url: str, token: str, **context: Any) -> Page:
    """A page of its own context; CSP bypassed so the test (only) can inject axe-core."""
    assert AXE.exists(), f"{AXE} is missing: run `npm ci` (package-lock.json pins axe-core)"
    ctx = await chromium.new_context(viewport=DESKTOP, bypass_csp=True, **context)
    page: Page = await ctx.new_page()
    await page.goto(f"{base_url}/?token={token}")
    return page


async def axe_violations(page: Page) -> list[str]:
    """axe-core's violations on the page as it is now, one line each."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.add_script_tag(path=str(AXE))
    found = await page.evaluate(
        """async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
          .map(v => `${v.id}: ${v.nodes.map(n => n.target.join(" ") + " " +
            (n.any[0] ? n.any[0].message : "")).join(" | ")}`)"""
    )
    return list(found)


async def axe_everywhere(page: Page, state: str) -> list[str]:
    """axe in light and dark, on a desktop and a 390 px phone: what it found, by where."""
    problems = []
    for scheme in ("light", "dark"):
        await page.emulate_media(color_scheme=scheme, reduced_motion="reduce")
        for name, size in (("desktop", DESKTOP), ("phone", PHONE)):
            await page.set_viewport_size(size)
            # Checked once the new colours are in: no transition or animation still running.
            await page.wait_for_function(
                """([scheme, width]) => matchMedia(`(prefers-color-scheme: ${scheme})`).matches &&
                  innerWidth === width &&
                  document.getAnimations().every(a => a.playState !== "running") &&
                  new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() =>
                    r(true))))""",
                arg=[scheme, size["width"]],
            )
            problems += [f"{state}/{scheme}/{name}: {v}" for v in await axe_violations(page)]
    await page.set_viewport_size(DESKTOP)
    await page.emulate_media(color_scheme="light")
    return problems


async def test_axe_finds_no_violations_in_any_state(
    chromium: Any, server: Any, make_user: Any, workers: Any
) -> None:
    """Issue 16 item 4: zero axe-core violations, light and dark, desktop and 390 px, with no
    image yet, with cards queued, running, done, failed and canceled, while reconnecting, and
    on the sign-in card."""
    alice = await make_user("alice")
    page = await open_with_axe(chromium, server.base_url, alice.token)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(page.locator("#empty")).to_be_visible()
    problems = await axe_everywhere(page, "empty")

    conversation = (await alice.api.conversations())[0]["id"]
    done = (await alice.api.submit(conversation, "a lighthouse at dusk"))["job_id"]
    failed = (await alice.api.submit(conversation, "a broken one [fail]", max_attempts=1))["job_id"]
    running = (await alice.api.submit(conversation, "runs until canceled [hang]"))["job_id"]
    queued = (await alice.api.submit(conversation, "waits behind it"))["job_id"]
    canceled = (await alice.api.submit(conversation, "changed my mind"))["job_id"]
    await alice.api.call("POST", f"/api/jobs/{canceled}/cancel")
    workers.start(delay=0.1)
    for job_id, status in [
        (done, "complete"),
        (failed, "error"),
        (running, "processing"),
        (queued, "queued"),
        (canceled, "canceled"),
    ]:
        await expect(card(page, job_id)).to_have_attribute("data-status", status)
    await expect(card(page, done).locator("img.card-image")).to_be_visible()
    problems += await axe_everywhere(page, "cards")

    # The socket cannot get through: the pill says "Reconnecting…" until it can.
    await page.route_web_socket("**/ws**", lambda ws: asyncio.ensure_future(ws.close()))
    await page.evaluate("window.gpuqueue.socket.start()")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    problems += await axe_everywhere(page, "reconnecting")
    await alice.api.call("POST", f"/api/jobs/{running}/cancel")

    signed_out = await open_with_axe(chromium, server.base_url, "not-a-token")
    await expect(signed_out.locator("#signin")).to_be_visible()
    problems += await axe_everywhere(signed_out, "sign-in")
    await page.context.close()
    await signed_out.context.close()
    assert not problems, "\n".join(problems)


async def test_one_live_region_names_the_image_and_coalesces_queue_moves(
    make_user: Any, open_page: Any, workers: Any
) -> None:
    """Issue 16 item 3: no card is a live region; the page's one polite region says, by name,
    what changed for the person's own jobs, one sentence for a queue move however many cards
    moved; a failure says why; Cancel and Download name the image in a few words."""
    alice = await make_user("alice")
    tab = await open_page(alice)
    page = tab.page
    await page.evaluate(
        """() => {
          const region = document.getElementById("announcements");
          window.__said = [];
          new MutationObserver(() => window.__said.push(region.textContent))
            .observe(region, { childList: true, characterData: true, subtree: true });
        }"""
    )
    conversation = (await alice.api.conversations())[0]["id"]
    long_prompt = "a red fox in deep snow under a pale winter sun, oil on canvas, very detailed"
    ids = [(await alice.api.submit(conversation, f"{long_prompt} [hang]"))["job_id"]]
    ids += [(await alice.api.submit(conversation, f"fox number {n}"))["job_id"] for n in (2, 3, 4)]
    await expect(page.locator("article.card")).to_have_count(4)
    await expect(card(page, ids[3])).to_have_attribute("data-position", "4")
    live = await page.locator("[aria-live]").evaluate_all("els => els.map(e => e.id)")
    assert sorted(live) == ["announcements", "connection"], live

    cancel = card(page, ids[0]).locator("button.cancel")
    name = await cancel.get_attribute("aria-label")
    assert name == "Cancel 'a red fox in deep snow under a pale…'", name
    assert await cancel.get_attribute("aria-describedby") is None

    await page.evaluate("window.__said.length = 0")
    workers.start(delay=0.3)
    # The first job starts and the three behind it move up a place each: one sentence for the
    # three moves, naming the image now at the front.
    await expect(card(page, ids[0])).to_have_attribute("data-status", "processing")
    await expect(card(page, ids[1])).to_have_attribute("data-position", "1")
    await page.wait_for_function(
        """() => window.__said.some(t => t.includes('moved in line')) &&
          window.__said.some(t => t.includes('is being generated'))"""
    )
    said = await page.evaluate("window.__said")
    assert any("'a red fox in deep snow under a pale…' is being generated" in t for t in said)
    moves = [t for t in said if "in line" in t]
    assert len(moves) <= 2, said  # three cards moved: not one announcement per card
    assert any(
        "3 of your images moved in line; your image 'fox number 2' is now 1st" in t for t in moves
    ), said

    await card(page, ids[0]).locator("button.cancel").click()
    await expect(card(page, ids[3])).to_have_attribute("data-status", "complete")
    await page.wait_for_function(
        "() => window.__said.some(t => t.includes(\"'fox number 4' is done\"))"
    )
    failing = (await alice.api.submit(conversation, "a cat [fail]", max_attempts=1))["job_id"]
    await expect(card(page, failing)).to_have_attribute("data-status", "error")
    await page.wait_for_function(
        "() => window.__said.some(t => t.includes(\"'a cat [fail]' failed: the stub backend\"))"
    )
    download = card(page, ids[3]).locator("a.download")
    assert await download.get_attribute("aria-label") == "Download 'fox number 4'"
    assert json.dumps(await page.evaluate("window.__said")).count("fox number 4' is done") == 1


async def test_a_phones_closed_drawer_is_out_of_the_way_and_touch_has_no_shortcut_hint(
    chromium: Any, server: Any, make_user: Any
) -> None:
    """Issue 16 item 5: on a 390 px touch phone the closed drawer is inert (Tab never lands in
    it) and casts no shadow on screen; opened, it takes the focus; the Ctrl+Enter hint is not
    shown on a touch screen (it is on a desktop)."""
    alice = await make_user("alice")
    page = await open_with_axe(
        chromium, server.base_url, alice.token, has_touch=True, is_mobile=True
    )
    await page.set_viewport_size(PHONE)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    drawer = page.locator("#sidebar")
    await expect(drawer).to_have_js_property("inert", True)
    await expect(drawer).not_to_be_visible()  # hidden, so its shadow is not drawn either
    await expect(page.locator(".form-hint")).to_be_hidden()
    for _ in range(12):
        await page.keyboard.press("Tab")
        assert await page.evaluate("!document.activeElement.closest('#sidebar')")

    await page.get_by_role("button", name="Conversations").click()
    await expect(drawer).to_have_js_property("inert", False)
    await expect(page.locator("#new-conversation")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(drawer).to_have_js_property("inert", True)
    await expect(page.get_by_role("button", name="Conversations")).to_be_focused()
    await page.context.close()

    desktop = await open_with_axe(chromium, server.base_url, alice.token)
    await expect(desktop.locator(".form-hint")).to_be_visible()
    await expect(desktop.locator("#sidebar")).to_have_js_property("inert", False)
    await desktop.context.close()
