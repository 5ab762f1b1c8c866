"""Browser fixtures: the real web app in-process, stub workers as subprocesses, and Debian's
headless Chromium driven by Playwright, all on the real PostgreSQL of tests/conftest.py.

Everything async runs on the session's event loop, so the in-process server keeps answering
while a test awaits the browser.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from harness.commands import WorkerChild
from queueing import db, tokens
from queueing.config import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 900}


# ---- the server ------------------------------------------------------------------------


@dataclass
class Server:
    """The web app on 127.0.0.1:<free port>, and what a test needs to reach into it."""

    app: web.Application
    base_url: str
    database_url: str


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    from web.app import create_app

    settings = Settings(database_url=database_url)
    app = create_app(settings, database_url)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Server(app=app, base_url=f"http://{host}:{port}", database_url=database_url)
    finally:
        await runner.cleanup()


# ---- users and the API -----------------------------------------------------------------


@dataclass
class Api:
    """The HTTP API as one user, for what a test sets up or checks behind the page's back."""

    base_url: str
    token: str
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(
            method, self.base_url + path, json=body, headers=headers
        ) as response:
            data = await response.json(content_type=None)
            assert response.status == expect, (method, path, response.status, data)
            return data

    async def submit(self, conversation_id: str, prompt: str, **params: Any) -> dict[str, Any]:
        body = {"prompt": prompt, **params}
        return dict(
            await self.call("POST", f"/api/conversations/{conversation_id}/images", body, 202)
        )

    async def jobs(self, conversation_id: str) -> list[dict[str, Any]]:
        return list((await self.call("GET", f"/api/conversations/{conversation_id}/jobs"))["jobs"])

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/api/jobs/{job_id}"))

    async def conversations(self) -> list[dict[str, Any]]:
        data = await self.call("GET", "/api/conversations")
        return list(data if isinstance(data, list) else data["conversations"])


@dataclass
class User:
    name: str
    token: str
    api: Api


@pytest.fixture
async def make_user(server: Server) -> AsyncIterator[Callable[[str], Awaitable[User]]]:
    async with (
        db.make_pool(server.database_url, "gpuqueue-browser-test", min_size=1, max_size=2) as pool,
        aiohttp.ClientSession() as session,
    ):

        async def make(name: str) -> User:
            token = await tokens.create_token(pool, name)
            return User(name=name, token=token, api=Api(server.base_url, token, session))

        yield make


# ---- stub workers ----------------------------------------------------------------------


@dataclass
class Workers:
    database_url: str
    folder: Path
    started: list[WorkerChild] = field(default_factory=list)

    def start(
        self, delay: float = 0.6, device: str = "cpu", model: str | None = None
    ) -> WorkerChild:
        """A `gpuqueue worker --backend stub` process; `delay` is seconds per image; `model`
        the model it serves (else the default one, tiny)."""
        env = {
            "GPUQUEUE_STUB_DELAY": str(delay),
            "GPUQUEUE_GRACE_S": "1",
            "GPUQUEUE_POLL_INTERVAL_S": "0.2",
            "GPUQUEUE_LOG_LEVEL": "WARNING",
        }
        log_path = self.folder / f"worker-{len(self.started)}.log"
        args = ("--model", model) if model else ()
        worker = WorkerChild(self.database_url, log_path, device=device, args=args, env=env)
        self.started.append(worker)
        return worker


@pytest.fixture
async def workers(server: Server, tmp_path: Path) -> AsyncIterator[Workers]:
    handle = Workers(server.database_url, tmp_path)
    try:
        yield handle
    finally:
        await asyncio.gather(*(worker.stop() for worker in handle.started))


# ---- the browser -----------------------------------------------------------------------


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Tab:
    """One user's page, with what went wrong in it (uncaught errors, CSP violations)."""

    page: Any
    context: Any
    problems: list[str]


@pytest.fixture
async def open_page(chromium: Any, server: Server) -> AsyncIterator[Callable[..., Awaitable[Tab]]]:
    """open_page(user, path="/") -> a fresh browser context (its own localStorage) showing
    the page, signed in through ?token=, once it is connected."""
    from playwright.async_api import expect

    tabs: list[Tab] = []

    async def open_(user: User, path: str = "/", *, viewport: dict[str, int] | None = None) -> Tab:
        context = await chromium.new_context(viewport=viewport or VIEWPORT)
        page = await context.new_page()
        tab = Tab(page=page, context=context, problems=[])
        page.on("pageerror", lambda exc: tab.problems.append(f"uncaught: {exc}"))
        page.on(
            "console",
            lambda msg: (
                tab.problems.append(f"console: {msg.text}")
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None
            ),
        )
        tabs.append(tab)
        sep = "&" if "?" in path else "?"
        await page.goto(f"{server.base_url}{path}{sep}token={user.token}")
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        return tab

    yield open_
    problems = [p for tab in tabs for p in tab.problems]
    for tab in tabs:
        await tab.context.close()
    assert not problems, problems


@pytest.fixture(autouse=True)
def _expect_timeout() -> None:
    """Every expect() waits up to 15 s: the deadline for a page condition, never a sleep."""
    from playwright.async_api import expect

    expect.set_options(timeout=15_000)
