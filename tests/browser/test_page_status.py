"""Knowing whether anything moves and when it is done (issue 16 items 2 and 8): the line above the
cards says how many GPUs are online, which model no worker serves and how long the queue is; the
tab's title says where the person's images are; a notification, when asked for, says that one is
done while the tab is hidden."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import expect

pytestmark = pytest.mark.browser

# Records the notifications the page shows (the browser's own are not visible to a test).
RECORD_NOTIFICATIONS = """(() => {
  window.__notified = [];
  const Real = window.Notification;
  window.Notification = class extends Real {
    constructor(title, options) { super(title, options); window.__notified.push(options.body); }
  };
})()"""

# The tab as hidden, as when the person is in another tab.
HIDE_TAB = """() => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


async def test_the_page_says_when_no_worker_serves_the_model_and_the_tab_says_the_place(
    make_user: Any, open_page: Any, workers: Any
) -> None:
    """Issue 16 items 2 and 8: with no worker, the page says so and counts the queue (everyone's
    jobs, another user's included), and the title gives the person's best place; once a worker
    runs the jobs, the line counts the GPU and the title says "✓ done"."""
    alice, bob = await make_user("alice"), await make_user("bob")
    bobs = await bob.api.call("POST", "/api/conversations", {"title": ""}, 201)
    await bob.api.submit(bobs["id"], "bob's, ahead of alice")
    tab = await open_page(alice)
    page = tab.page
    fleet = page.locator("#fleet")
    await expect(fleet).to_have_text("No worker serves tiny · 1 image in line")
    await expect(fleet).to_have_attribute("data-state", "none")

    conversation = (await alice.api.conversations())[0]["id"]
    for n in (1, 2):
        await alice.api.submit(conversation, f"alice's {n}")
    await expect(page.locator("article.card")).to_have_count(2)
    await expect(page).to_have_title("2nd in line · gpuqueue")
    await expect(fleet).to_have_text("No worker serves tiny · 3 images in line")

    workers.start(delay=0.2)
    await expect(page.locator('article.card[data-status="complete"]')).to_have_count(2)
    await expect(page).to_have_title("✓ done · gpuqueue")
    await expect(fleet).to_have_text("1 GPU online · 0 images in line")
    await expect(fleet).to_have_attribute("data-state", "ok")


async def test_a_job_done_while_the_tab_is_hidden_is_notified_when_asked_for(
    chromium: Any, server: Any, make_user: Any, workers: Any
) -> None:
    """Issue 16 item 8: with "Notify me" ticked (the browser's permission granted), a job that
    finishes while the tab is hidden shows a notification naming the image; one that finished
    in view, before the box was ticked, shows none; the choice stays after a reload."""
    alice = await make_user("alice")
    context = await chromium.new_context(permissions=["notifications"])
    await context.add_init_script(RECORD_NOTIFICATIONS)
    page = await context.new_page()
    await page.goto(f"{server.base_url}/?token={alice.token}")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    conversation = (await alice.api.conversations())[0]["id"]
    workers.start(delay=0.1)

    seen = (await alice.api.submit(conversation, "seen as it finishes"))["job_id"]
    await expect(page.locator(f'article[data-job-id="{seen}"]')).to_have_attribute(
        "data-status", "complete"
    )
    await expect(page.locator("#announcements")).to_have_text(
        "Your image 'seen as it finishes' is done."
    )
    toggle = page.get_by_label("Notify me when an image is done while this tab is hidden")
    await toggle.check()
    await page.evaluate(HIDE_TAB)
    hidden = (await alice.api.submit(conversation, "a fox while away"))["job_id"]
    await expect(page.locator(f'article[data-job-id="{hidden}"]')).to_have_attribute(
        "data-status", "complete"
    )
    await page.wait_for_function("() => window.__notified.length > 0")
    assert await page.evaluate("window.__notified") == ["Your image 'a fox while away' is done"]
    # The choice is remembered in this browser.
    await page.reload()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(toggle).to_be_checked()
    await context.close()
