"""Models on the page (contract: Models, Fair share): the model picker, the card that says which
model its job is for and when no GPU runs that model, and "Move to front", against a real
server, database and stub workers serving named models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, expect

from harness.waiting import eventually

pytestmark = pytest.mark.browser

WAITING_FOR_TINY = "Waiting for a GPU that runs tiny"


def card(page: Page, job_id: str) -> Any:
    return page.locator(f'article.card[data-job-id="{job_id}"]')


async def submit_from_page(page: Page, prompt: str) -> str:
    """Submit a prompt as a person does; the new job's id."""
    before = set(
        await page.locator("article.card").evaluate_all("els => els.map(e => e.dataset.jobId)")
    )
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("article.card")).to_have_count(len(before) + 1)
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value("")
    ids = await page.locator("article.card").evaluate_all("els => els.map(e => e.dataset.jobId)")
    (new,) = set(ids) - before
    return str(new)


async def live_workers_of(user: Any, model: str, count: int) -> None:
    """Wait until GET /api/models says `count` live workers serve `model`."""

    async def probe() -> bool:
        listed = (await user.api.call("GET", "/api/models"))["models"]
        return any(m["name"] == model and m["workers"] == count for m in listed)

    await eventually(probe, within=30, interval=0.1, what=f"{count} live worker(s) of {model}")


async def models_read(page: Page, count: int) -> None:
    """Wait until the page has read a models list of `count` models."""
    await page.wait_for_function(
        "n => window.gpuqueue.models.list.length === n", arg=count, timeout=15_000
    )


async def test_the_picker_offers_the_models_and_sends_the_one_picked(
    make_user: Any, open_page: Any, workers: Any
) -> None:
    """Models: with one model there is nothing to pick and the picker stays hidden; once a
    worker serves a second one, the picker lists both with the default picked, the job goes to
    the model picked, and its card says which model it is for."""
    alice = await make_user("alice")
    tab = await open_page(alice)
    page = tab.page
    await models_read(page, 1)
    picker = page.get_by_label("Model", exact=True)
    await expect(picker).to_be_hidden()
    only = await submit_from_page(page, "a default job")
    await expect(card(page, only).locator(".card-model")).to_have_text("model tiny")
    assert (await alice.api.job(only))["model"] == "tiny"
    await card(page, only).get_by_role("button", name="Cancel").click()

    workers.start(delay=0.2, model="b")
    await live_workers_of(alice, "b", 1)
    await page.reload()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(picker).to_be_visible()
    await expect(picker.locator("option")).to_have_text(["b", "tiny"])
    await expect(picker).to_have_value("tiny")  # the default ("default": true)

    await picker.select_option("b")
    on_b = await submit_from_page(page, "a job for b")
    await expect(card(page, on_b).locator(".card-model")).to_have_text("model b")
    await expect(card(page, on_b)).to_have_attribute("data-status", "complete")
    assert (await alice.api.job(on_b))["model"] == "b"
    await expect(picker).to_have_value("b")  # the person's pick stays

    await picker.select_option("tiny")
    on_tiny = await submit_from_page(page, "a job for tiny")
    await expect(card(page, on_tiny).locator(".card-model")).to_have_text("model tiny")
    await expect(card(page, on_tiny).locator(".card-eta")).to_have_text(WAITING_FOR_TINY)
    assert (await alice.api.job(on_tiny))["model"] == "tiny"


async def test_a_job_of_a_model_no_worker_serves_says_it_waits_for_one(
    make_user: Any, open_page: Any, workers: Any
) -> None:
    """Models: jobs of a model whose workers are all down stay queued with no ETA, and the card
    says plainly that they wait for a GPU with that model; once a worker of it is back, they
    run, and a job behind a running one shows an ETA again."""
    alice = await make_user("alice")
    first = workers.start(delay=0.3, model="b")
    await live_workers_of(alice, "b", 1)
    await first.stop()
    await live_workers_of(alice, "b", 0)

    tab = await open_page(alice)
    page = tab.page
    await page.get_by_label("Model", exact=True).select_option("b")
    running = await submit_from_page(page, "runs until canceled [hang]")
    behind = await submit_from_page(page, "waits behind it")
    for job_id, place in [(running, "1st in line"), (behind, "2nd in line")]:
        await expect(card(page, job_id).locator(".card-status")).to_contain_text(place)
        await expect(card(page, job_id).locator(".card-eta")).to_have_text(
            "Waiting for a GPU that runs b"
        )
    assert (await alice.api.job(behind))["eta_s"] is None

    workers.start(delay=0.3, model="b")
    await expect(card(page, running)).to_have_attribute("data-status", "processing")
    await expect(card(page, behind).locator(".card-status")).to_contain_text("1st in line")
    await expect(card(page, behind).locator(".card-eta")).not_to_contain_text("Waiting for a GPU")
    await card(page, running).get_by_role("button", name="Cancel").click()
    await expect(card(page, behind)).to_have_attribute("data-status", "complete")


async def test_move_to_front_puts_a_later_job_first_among_the_users_own(
    make_user: Any, open_page: Any
) -> None:
    """Fair share, move to the front: "Move to front" on a queued card gives that job its
    owner's earliest place; the owner's other jobs move back one place each, live, and another
    user's job keeps its position. A job that left the line meanwhile says why it cannot move.
    No worker serves tiny, so the jobs stay queued."""
    alice, bob = await make_user("alice"), await make_user("bob")
    tab = await open_page(alice)
    page = tab.page
    first = await submit_from_page(page, "alice's first")
    second = await submit_from_page(page, "alice's second")
    third = await submit_from_page(page, "alice's third")
    bob_conversation = await bob.api.call("POST", "/api/conversations", {"title": ""}, 201)
    bobs = (await bob.api.submit(bob_conversation["id"], "bob's only"))["job_id"]

    async def positions() -> dict[str, int]:
        return {j: (await alice.api.job(j))["queue_position"] for j in (first, second, third)}

    before = await positions()
    bob_before = (await bob.api.job(bobs))["queue_position"]
    assert before[first] < before[second] < before[third]
    for job_id, place in before.items():
        await expect(card(page, job_id)).to_have_attribute("data-position", str(place))
    await expect(card(page, third).locator(".card-eta")).to_have_text(WAITING_FOR_TINY)
    move = card(page, third).get_by_role("button", name="Move to front", exact=True)
    await expect(card(page, first).get_by_role("button", name="Move to front")).to_be_hidden()

    await move.click()
    # The third takes alice's earliest place; her first and second move back one of hers each.
    want = {third: before[first], first: before[second], second: before[third]}
    for job_id, place in want.items():
        await expect(card(page, job_id)).to_have_attribute("data-position", str(place))
    assert await positions() == want
    assert (await bob.api.job(bobs))["queue_position"] == bob_before
    # Alice's first job was 1st in line, so the third is now: nothing is ahead of it to pass.
    assert want[third] == 1
    await expect(move).to_be_hidden()
    assert await page.evaluate("document.activeElement.dataset.jobId") == third

    # Behind the page's back (its socket closed), the second job is canceled: moving it is
    # refused (409), the notice says why and the card shows where the job is now.
    await page.evaluate("window.gpuqueue.socket.stop()")
    await alice.api.call("POST", f"/api/jobs/{second}/cancel")
    await card(page, second).get_by_role("button", name="Move to front").click()
    await expect(page.locator("#notice")).to_contain_text("Could not move to the front")
    await expect(page.locator("#notice")).to_contain_text("not queued")
    await expect(card(page, second)).to_have_attribute("data-status", "canceled")
