"""The page against a real server, database and stub worker: live positions, reload, failure,
retry and cancel, as a person sees them in Chromium."""

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

# Records, per card, every status line it shows and every "step i of n", as they change.
RECORDER = """() => {
  const seen = {};
  const steps = {};
  window.__seen = seen;
  window.__steps = steps;
  const push = (map, id, text) => {
    const list = map[id] || (map[id] = []);
    if (text && list[list.length - 1] !== text) list.push(text);
  };
  const snap = () => {
    for (const card of document.querySelectorAll("article.card")) {
      push(seen, card.dataset.jobId, card.querySelector(".card-status").textContent.trim());
      if (card.dataset.status === "processing") {
        push(steps, card.dataset.jobId, card.querySelector(".card-step").textContent);
      }
    }
  };
  snap();
  new MutationObserver(snap).observe(document.getElementById("cards"),
    { subtree: true, childList: true, characterData: true, attributes: true });
}"""


def conversation_of(page: Page) -> str:
    return parse_qs(urlparse(page.url).query)["c"][0]


def card(page: Page, job_id: str) -> Any:
    return page.locator(f'article.card[data-job-id="{job_id}"]')


async def submit_from_page(page: Page, prompt: str) -> None:
    before = await page.locator("article.card").count()
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("article.card")).to_have_count(before + 1)
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value("")


async def job_ids(page: Page) -> list[str]:
    """The cards' job ids in submission order (the page shows the newest first)."""
    ids = await page.locator("article.card").evaluate_all("els => els.map(e => e.dataset.jobId)")
    return list(reversed(ids))


async def shown_positions(page: Page) -> dict[str, tuple[str, int]]:
    return {
        job_id: (status, int(position))
        for job_id, status, position in await page.locator("article.card").evaluate_all(
            "els => els.map(e => [e.dataset.jobId, e.dataset.status, e.dataset.position])"
        )
    }


def in_order(wanted: list[str], seen: list[str]) -> bool:
    """Each wanted text is part of something seen, in this order."""
    rest = iter(seen)
    return all(any(w in item for item in rest) for w in wanted)


async def test_positions_count_down_to_processing_and_complete(
    make_user: Any, open_page: Any, workers: Any
) -> None:
    """R4.3 (and R8.1-8.3): three prompts wait as 1st, 2nd and 3rd in line; once a worker runs,
    WebSocket messages move the last one up to 2nd, 1st, then processing with step i of n, then
    complete with its image, without a reload."""
    alice = await make_user("alice")
    tab = await open_page(alice)
    page = tab.page
    prompts = ["a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen, studio light"]
    for prompt in prompts:
        await submit_from_page(page, prompt)
    ids = await job_ids(page)
    for job_id, ordinal in zip(ids, ["1st", "2nd", "3rd"], strict=True):
        await expect(card(page, job_id).locator(".card-status")).to_contain_text(
            f"{ordinal} in line"
        )
        await expect(card(page, job_id).get_by_role("button", name="Cancel")).to_be_visible()
    await expect(card(page, ids[0]).locator(".card-prompt")).to_have_text(prompts[0])

    await page.evaluate(RECORDER)
    workers.start(delay=0.8)
    for job_id in ids:
        await expect(card(page, job_id)).to_have_attribute("data-status", "complete")
        await expect(card(page, job_id).locator("img.card-image")).to_be_visible()
    last = ids[2]
    seen = (await page.evaluate("window.__seen"))[last]
    assert in_order(["3rd in line", "2nd in line", "1st in line", "Generating", "Done"], seen), seen
    steps = await page.evaluate("window.__steps")
    assert any(s.startswith("step ") and " of " in s for s in steps[last]), steps
    natural = await card(page, last).locator("img.card-image").evaluate("img => img.naturalWidth")
    assert natural > 0
    api_jobs = await alice.api.jobs(conversation_of(page))
    assert [j["status"] for j in api_jobs] == ["complete"] * 3


async def test_reload_in_the_middle_shows_the_same_positions(
    make_user: Any, open_page: Any, workers: Any
) -> None:
    """R4.4, R3.4: with one job running and others queued, a reload shows the positions the
    database computes (the same as before the reload) and the running job's progress."""
    alice = await make_user("alice")
    tab = await open_page(alice)
    page = tab.page
    workers.start(delay=0.5)
    await submit_from_page(page, "a slow one [hang]")
    running = (await job_ids(page))[0]
    await expect(card(page, running).locator(".card-step")).to_contain_text("step ")
    for prompt in ["first in line", "second in line", "third in line"]:
        await submit_from_page(page, prompt)
    ids = await job_ids(page)
    want = {running: ("processing", 0)} | {
        job_id: ("queued", n) for n, job_id in enumerate(ids[1:], start=1)
    }
    await expect(card(page, ids[3]).locator(".card-status")).to_contain_text("3rd in line")
    assert await shown_positions(page) == want

    api_jobs = await alice.api.jobs(conversation_of(page))
    assert {j["job_id"]: (j["status"], j["queue_position"]) for j in api_jobs} == want

    url = page.url
    await page.reload()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    assert page.url == url  # the address names the conversation; the token is gone
    assert "token=" not in page.url
    await expect(page.locator("article.card")).to_have_count(4)
    await expect(card(page, ids[3]).locator(".card-status")).to_contain_text("3rd in line")
    assert await shown_positions(page) == want
    await expect(card(page, running).locator(".card-step")).to_contain_text("step ")
    for job_id, ordinal in zip(ids[1:], ["1st", "2nd", "3rd"], strict=True):
        await expect(card(page, job_id).locator(".ordinal")).to_have_text(ordinal)


async def test_a_failed_job_shows_its_error_after_a_reload_and_retry_resubmits_it(
    make_user: Any, open_page: Any, workers: Any
) -> None:
    """R6.3, R6.4: a job that fails (max_attempts 1) shows the stored error message, live and
    after a reload; Retry submits the same prompt and params again as a new job."""
    alice = await make_user("alice")
    tab = await open_page(alice)
    page = tab.page
    conversation = conversation_of(page)
    failed = await alice.api.submit(
        conversation,
        "[fail] a broken teapot",
        max_attempts=1,
        seed=42,
        steps=4,
        width=256,
        height=256,
    )
    job_id = failed["job_id"]
    workers.start(delay=0.2)
    failed_card = card(page, job_id)
    await expect(failed_card).to_have_attribute("data-status", "error")
    await expect(failed_card.locator(".card-error")).to_contain_text("failed on purpose")
    await expect(failed_card.locator(".card-prompt")).to_have_text("[fail] a broken teapot")

    await page.reload()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    failed_card = card(page, job_id)
    await expect(failed_card).to_have_attribute("data-status", "error")
    await expect(failed_card.locator(".card-status")).to_contain_text("Failed")
    await expect(failed_card.locator(".card-error")).to_contain_text("failed on purpose")
    await expect(failed_card.get_by_role("button", name="Cancel")).to_be_hidden()

    await failed_card.get_by_role("button", name="Retry").click()
    await expect(page.locator("article.card")).to_have_count(2)
    again = next(i for i in await job_ids(page) if i != job_id)
    await expect(card(page, again)).to_have_attribute("data-status", "error")
    original = await alice.api.job(job_id)
    retried = await alice.api.job(again)
    assert retried["prompt"] == original["prompt"]
    assert retried["params"] == original["params"]
    assert retried["max_attempts"] == 1


async def test_cancel_from_the_card(make_user: Any, open_page: Any, workers: Any) -> None:
    """Cancel while queued ends the job at once; cancel while processing ends it canceled once
    its worker notices; the card says so and keeps the keyboard focus."""
    alice = await make_user("alice")
    tab = await open_page(alice)
    page = tab.page
    workers.start(delay=0.5)
    await submit_from_page(page, "runs until canceled [hang]")
    running = (await job_ids(page))[0]
    await expect(card(page, running)).to_have_attribute("data-status", "processing")
    await submit_from_page(page, "waits in line")
    waiting = (await job_ids(page))[1]
    await expect(card(page, waiting).locator(".card-status")).to_contain_text("1st in line")

    await card(page, waiting).get_by_role("button", name="Cancel").click()
    await expect(card(page, waiting)).to_have_attribute("data-status", "canceled")
    await expect(card(page, waiting).locator(".card-status")).to_contain_text("Canceled")
    await expect(card(page, waiting).get_by_role("button", name="Cancel")).to_be_hidden()
    assert await page.evaluate("document.activeElement.dataset.jobId") == waiting

    await card(page, running).get_by_role("button", name="Cancel").click()
    await expect(card(page, running)).to_have_attribute("data-status", "canceled")
    assert {j["status"] for j in await alice.api.jobs(conversation_of(page))} == {"canceled"}
