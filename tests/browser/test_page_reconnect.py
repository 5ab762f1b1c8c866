"""The page after the server drops its WebSocket: it says so, reconnects with since_seq, and
ends in the state a fresh reload shows, without being reloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from aiohttp import WSCloseCode

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import Page, expect

from web.keys import CLIENTS

pytestmark = pytest.mark.browser

# Records every state the connection notice goes through, and marks the document so a reload
# (which would wipe the mark) cannot pass for a recovery.
WATCH_CONNECTION = """() => {
  window.__notReloaded = true;
  const el = document.getElementById("connection");
  const states = [el.dataset.state + ":" + el.textContent.trim()];
  window.__states = states;
  new MutationObserver(() => {
    const now = el.dataset.state + ":" + el.textContent.trim();
    if (states[states.length - 1] !== now) states.push(now);
  }).observe(el, { attributes: true, childList: true, subtree: true, characterData: true });
}"""


def conversation_of(page: Page) -> str:
    return parse_qs(urlparse(page.url).query)["c"][0]


def drop_websockets(server: Any) -> int:
    """Close every WebSocket the server holds, as a restart or a network cut would."""
    clients = list(server.app[CLIENTS])
    for client in clients:
        client.kill(WSCloseCode.SERVICE_RESTART, "dropped by the test")
    return len(clients)


async def page_state(page: Page) -> dict[str, tuple[str, int, str]]:
    rows = await page.locator("article.card").evaluate_all(
        """els => els.map(e => [e.dataset.jobId, e.dataset.status, Number(e.dataset.position),
                               e.querySelector(".card-status").textContent])"""
    )
    return {job_id: (status, position, text) for job_id, status, position, text in rows}


async def test_the_page_recovers_after_the_server_drops_the_websocket(
    make_user: Any, open_page: Any, workers: Any, server: Any
) -> None:
    """Contract "The page" (it reconnects by itself after a dropped WebSocket), R8, R4.3: the
    server closes the socket while jobs move; the page shows "Reconnecting…", reconnects with
    backoff and since_seq, receives the events it missed and the later ones, and ends equal to
    the database, all without a reload."""
    alice = await make_user("alice")
    tab = await open_page(alice)
    page = tab.page
    conversation = conversation_of(page)
    await page.evaluate(WATCH_CONNECTION)
    ids = [
        (await alice.api.submit(conversation, f"picture {n}", steps=5))["job_id"] for n in range(4)
    ]
    await expect(page.locator('article.card[data-status="queued"]')).to_have_count(4)
    workers.start(delay=0.5)
    await expect(page.locator(f'article.card[data-job-id="{ids[0]}"]')).to_have_attribute(
        "data-status", "processing"
    )

    assert drop_websockets(server) == 1
    # Jobs go on moving while the page is away: these events come back through since_seq.
    late = (await alice.api.submit(conversation, "submitted while the page was away"))["job_id"]
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    states = await page.evaluate("window.__states")
    assert "reconnecting:Reconnecting…" in states, states
    assert states[-1] == "live:Live", states

    for job_id in [*ids, late]:
        await expect(page.locator(f'article.card[data-job-id="{job_id}"]')).to_have_attribute(
            "data-status", "complete"
        )

    # A second drop, once everything is quiet: later events still arrive.
    assert drop_websockets(server) == 1
    await expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    after = (await alice.api.submit(conversation, "after the second drop"))["job_id"]
    await expect(page.locator(f'article.card[data-job-id="{after}"]')).to_have_attribute(
        "data-status", "complete"
    )
    assert await page.evaluate("window.__notReloaded") is True
    assert await page.evaluate("window.gpuqueue.socket.opens") == 3

    recovered = await page_state(page)
    api_jobs = await alice.api.jobs(conversation)
    assert {j: (s, p) for j, (s, p, _) in recovered.items()} == {
        j["job_id"]: (j["status"], j["queue_position"]) for j in api_jobs
    }
    reloaded = await open_page(alice, f"/?c={conversation}")
    await expect(reloaded.page.locator("article.card")).to_have_count(len(api_jobs))
    assert await page_state(reloaded.page) == recovered
