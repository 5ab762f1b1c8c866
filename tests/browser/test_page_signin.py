"""A token that stops working while the page is open sends the person to sign in (contract
"Conversations and the page", issue 16 item 1): a 401 on any request, and the socket closed with
4401, show the sign-in card, as a bad token in the address does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import expect

from queueing import db, tokens
from queueing.config import Settings
from tests.browser.conftest import Server
from web.keys import WebOptions

pytestmark = pytest.mark.browser

REVOKED = "Your token was revoked or has expired"


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    """The web app of conftest.py, with open sockets' tokens checked every 0.2 s (not 10)."""
    from web.app import create_app

    app = create_app(
        Settings(database_url=database_url), database_url, WebOptions(token_check_s=0.2)
    )
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Server(app=app, base_url=f"http://{host}:{port}", database_url=database_url)
    finally:
        await runner.cleanup()


async def revoke(server: Server, token: str) -> None:
    async with db.make_pool(server.database_url, "test-revoke", min_size=1, max_size=1) as pool:
        assert await tokens.revoke_token(pool, token)


async def signed_out(page: Any) -> None:
    """The sign-in card, saying why, in place of the workspace, with the token forgotten."""
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator("#signin-reason")).to_contain_text(REVOKED)
    await expect(page.locator("#workspace")).to_be_hidden()
    await expect(page.get_by_label("API token")).to_be_focused()
    assert await page.evaluate("localStorage.getItem('gpuqueue.token')") is None


async def test_a_token_that_stops_working_shows_the_sign_in_card(
    server: Server, make_user: Any, open_page: Any
) -> None:
    """Issue 16 item 1: a submit whose token was revoked (401; the socket stopped, so only the
    request can tell) shows the sign-in card, not the server's message in the form; a valid
    token pasted in brings the person back; when that one is revoked too, the server closes the
    quiet socket (4401) and the sign-in card shows again."""
    alice = await make_user("alice")
    tab = await open_page(alice)
    page = tab.page
    await page.evaluate("window.gpuqueue.socket.stop()")
    await revoke(server, alice.token)
    await page.get_by_label("Prompt", exact=True).fill("a fox")
    await page.get_by_role("button", name="Generate").click()
    await signed_out(page)

    again = await make_user("alice")
    await page.get_by_label("API token").fill(again.token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#workspace")).to_be_visible()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")

    await revoke(server, again.token)
    await signed_out(page)
