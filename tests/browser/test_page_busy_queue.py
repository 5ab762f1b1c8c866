"""A busy queue at a glance: finished images, one running with its progress, several waiting
with their places in line and ETAs. Also makes the README's screenshot:

    GPUQUEUE_SCREENSHOT=docs/screenshot.png .venv/bin/python -m pytest \
        tests/browser/test_page_busy_queue.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

from playwright.async_api import expect

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [
    ("A lighthouse on a cliff at dusk, oil painting", 1201),
    ("Isometric cozy cabin in a snowy forest, warm light in the windows", 877),
    ("Retro-futuristic city skyline at night, synthwave colours", 4242),
    ("An origami fox on a wooden desk, soft studio lighting", 31337),
    ("Misty mountain lake at sunrise, watercolour", 2024),
    ("Astronaut tending a greenhouse on Mars, cinematic", 7),
    ("Macro photo of a dew-covered leaf, shallow depth of field", 99),
]


async def test_a_busy_queue_shows_every_state_at_once(
    make_user: Any, open_page: Any, workers: Any, tmp_path: Path
) -> None:
    """R4.3, R8.5 and "The page": complete cards with their image, prompt and seed; the running
    card with step i of n; queued cards as 1st, 2nd, 3rd… in line with "starts in about"."""
    alice = await make_user("alice")
    for title in ["Logo ideas", "Weekend watercolours"]:
        await alice.api.call("POST", "/api/conversations", {"title": title}, 201)
    conversation = await alice.api.call(
        "POST", "/api/conversations", {"title": "Concept art: the lighthouse level"}, 201
    )
    for prompt, seed in PROMPTS:
        await alice.api.submit(conversation["id"], prompt, seed=seed, steps=30)
    tab = await open_page(
        alice, f"/?c={conversation['id']}", viewport={"width": 1440, "height": 1000}
    )
    page = tab.page
    workers.start(delay=2.5)

    cards = page.locator("article.card")
    await expect(cards.and_(page.locator('[data-status="complete"]'))).to_have_count(2)
    running = page.locator('article.card[data-status="processing"]')
    await expect(running.locator(".card-step")).to_have_text(
        re.compile(r"step ([5-9]|1\d|2\d) of 30")
    )
    for image in await page.locator('article.card[data-status="complete"] img').all():
        await expect(image).to_be_visible()
        assert await image.evaluate("img => img.complete && img.naturalWidth > 0")
    done_meta = page.locator('article.card[data-status="complete"] .card-meta')
    await expect(done_meta.first).to_contain_text("seed ")
    queued = page.locator('article.card[data-status="queued"]')
    await expect(queued).to_have_count(4)
    await expect(queued.locator(".ordinal")).to_have_text(["4th", "3rd", "2nd", "1st"])
    await expect(queued.locator(".card-eta").first).to_contain_text("starts in about")

    target = Path(os.environ.get("GPUQUEUE_SCREENSHOT") or tmp_path / "screenshot.png")
    if not target.is_absolute():
        target = REPO / target
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(target), full_page=True, animations="disabled")
    assert target.stat().st_size > 10_000
