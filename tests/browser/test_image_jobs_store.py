"""imageJobsStore in the browser, fed messages directly: the rules that keep the page equal to
the database whatever order snapshots and WebSocket messages arrive in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed", allow_module_level=True)
pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.browser

STATIC_DIR = Path(__file__).resolve().parents[2] / "web" / "static"

C = "11111111-1111-1111-1111-111111111111"
OTHER = "22222222-2222-2222-2222-222222222222"
J1 = "aaaaaaaa-0000-0000-0000-000000000001"
J2 = "aaaaaaaa-0000-0000-0000-000000000002"
J3 = "aaaaaaaa-0000-0000-0000-000000000003"
J4 = "aaaaaaaa-0000-0000-0000-000000000004"

SETUP = f"""async () => {{
  const m = await import("/static/imageJobsStore.js");
  const f = await import("/static/format.js");
  const a = await import("/static/jobAnnouncer.js");
  const at = (s) => `2025-01-01T12:00:${{String(s).padStart(2, "0")}}.000000+00:00`;
  const job = (id, status, position, t, extra = {{}}) => ({{
    job_id: id, conversation_id: "{C}", status, queue_position: position, eta_s: null,
    prompt: "p", params: {{ seed: 1 }}, progress: null, error: null, image_url: null,
    created_at: at(0), transitions: [{{ status: "queued", at: at(0) }},
      ...(status === "queued" ? [] : [{{ status, at: at(t) }}])], ...extra,
  }});
  const list = (seq, ...jobs) => ({{ jobs, seq }});
  const event = (id, status, seq, t, position = 0, extra = {{}}) => ({{
    type: status, seq, job_id: id, message_id: "m", conversation_id: "{C}", status,
    queue_position: position, at: at(t), ...extra,
  }});
  const store = m.createImageJobsStore();
  // What the announcer says, with the ids of the finished jobs; flushed by hand, not by time.
  const said = [];
  const announcer = new a.JobAnnouncer(store, ({{ text, finished }}) =>
    said.push([text, finished.map((j) => j.job_id)]), {{ windowMs: 3600000 }});
  window.t = {{ m, f, at, job, list, event, store, said, announcer }};
  store.reset("{C}");
}}"""


@pytest.fixture(scope="module")
async def static_url() -> AsyncIterator[str]:
    """Only web/static/ and a blank page: the store is a unit, it needs no database."""

    async def blank(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>store</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", blank)
    app.router.add_static("/static/", STATIC_DIR)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


@pytest.fixture(scope="module")
async def blank_page(chromium: Any, static_url: str) -> AsyncIterator[Any]:
    context = await chromium.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(static_url + "/")
    yield page
    await context.close()
    assert not errors, errors


@pytest.fixture
async def page(blank_page: Any) -> Any:
    """The blank page with a fresh store following conversation C."""
    await blank_page.evaluate(SETUP)
    return blank_page


async def run(page: Any, body: str) -> Any:
    prelude = "const { store, job, list, event, m, f, said, announcer } = window.t;"
    return await page.evaluate(f"() => {{ {prelude} {body} }}")


async def test_a_duplicate_or_stale_event_is_ignored(page: Any) -> None:
    """R4.3, R8: events apply in seq order per job; a replayed or older seq changes nothing,
    and the store remembers the highest seq seen for since_seq."""
    result = await run(
        page,
        f"""
      store.applySnapshot(list(1, job("{J1}", "queued", 2, 0)));
      const first = store.applyMessage(event("{J1}", "processing", 10, 5));
      const duplicate = store.applyMessage(event("{J1}", "processing", 10, 5));
      const stale = store.applyMessage(event("{J1}", "queued", 9, 4, 1));
      return [first, duplicate, stale, store.get("{J1}").status, store.lastSeq];
    """,
    )
    assert result == [True, False, False, "processing", 10]


async def test_a_snapshot_older_than_an_event_does_not_undo_it(page: Any) -> None:
    """R3.4: a snapshot read before an event (a lower seq) arrives later than it: the job keeps
    the event's state; a snapshot as of that event wins, live position included."""
    result = await run(
        page,
        f"""
      store.applyMessage(event("{J1}", "complete", 12, 9, 0, {{ image_url: "/x" }}));
      store.applySnapshot(list(11, job("{J1}", "processing", 0, 5, {{ prompt: "a cat" }})));
      const kept = [store.get("{J1}").status, store.get("{J1}").prompt];
      store.applySnapshot(list(12, job("{J2}", "queued", 3, 0)));
      store.applyMessage(event("{J2}", "queued", 13, 0, 3));
      const sameTransition = store.get("{J2}").queue_position;
      store.applySnapshot(list(13, job("{J2}", "queued", 1, 0)));
      return [...kept, sameTransition, store.get("{J2}").queue_position];
    """,
    )
    assert result == ["complete", "a cat", 3, 1]


async def test_replayed_events_already_in_the_snapshot_are_skipped(page: Any) -> None:
    """A reconnect replays events after the last seq seen; those the fresh snapshot already
    includes must not move the job back, even for a moment."""
    result = await run(
        page,
        f"""
      store.applySnapshot(list(5, job("{J1}", "complete", 0, 8)));
      const statuses = [];
      store.subscribe(() => statuses.push(store.get("{J1}").status));
      store.applyMessage(event("{J1}", "queued", 3, 0, 1));
      store.applyMessage(event("{J1}", "processing", 4, 5));
      store.applyMessage(event("{J1}", "complete", 5, 8));
      return [store.get("{J1}").status, statuses.length, store.lastSeq];
    """,
    )
    assert result == ["complete", 0, 5]


async def test_positions_and_progress_apply_only_where_they_mean_something(page: Any) -> None:
    """R4.3: a position message moves a queued job and its ETA (the server's numbers, as
    given); progress moves a processing job; neither touches a job in another state."""
    result = await run(
        page,
        f"""
      store.applySnapshot(list(2, job("{J1}", "queued", 3, 0), job("{J2}", "processing", 0, 2)));
      store.applyMessage({{ type: "position", job_id: "{J1}", queue_position: 2, eta_s: 20 }});
      store.applyMessage({{ type: "progress", job_id: "{J2}", step: 4, steps: 20 }});
      store.applyMessage({{ type: "progress", job_id: "{J1}", step: 1, steps: 20 }});
      store.applyMessage({{ type: "position", job_id: "{J2}", queue_position: 1 }});
      const a = store.get("{J1}"), b = store.get("{J2}");
      return [a.queue_position, a.eta_s, a.progress, b.queue_position, b.progress];
    """,
    )
    assert result == [2, 20, None, 0, {"step": 4, "steps": 20}]


async def test_jobs_of_another_conversation_are_ignored(page: Any) -> None:
    """Isolation in the store too: a message about another conversation adds nothing; one
    about a job of this conversation made elsewhere adds it, marked for a details fetch."""
    result = await run(
        page,
        f"""
      const other = {{ ...event("{J1}", "queued", 1, 0, 1), conversation_id: "{OTHER}" }};
      store.applyMessage(other);
      const elsewhere = {{ ...job("{J2}", "queued", 1, 0), conversation_id: "{OTHER}" }};
      store.applySnapshot(list(1, elsewhere));
      const before = store.size;
      store.applyMessage(event("{J2}", "queued", 2, 0, 1));
      return [before, store.size, store.partialJobIds()];
    """,
    )
    assert result == [0, 1, [J2]]


async def test_ordinals_and_eta_read_naturally(page: Any) -> None:
    """The words on the card: "3rd in line", "starts in about 20 s"."""
    result = await run(
        page,
        """return [[1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111].map(f.ordinal).join(" "),
                 f.positionText(3), f.etaText(20), f.etaText(4.4), f.etaText(150),
                 f.etaText(null)];""",
    )
    assert result == [
        "1st 2nd 3rd 4th 11th 12th 13th 21st 22nd 23rd 101st 111th",
        "3rd in line",
        "starts in about 20 s",
        "starts in about 4 s",
        "starts in about 3 min",
        "",
    ]


async def test_one_queue_move_is_one_announcement_naming_the_front_image(page: Any) -> None:
    """Issue 16 item 3: what the page opened on is not announced; then the first job starting
    and the three behind it moving up a place is one announcement, naming the images."""
    result = await run(
        page,
        f"""
      const p = (prompt) => ({{ prompt }});
      store.applySnapshot(list(1, job("{J1}", "queued", 1, 0, p("a red fox")),
        job("{J2}", "queued", 2, 0, p("a grey wolf")), job("{J3}", "queued", 3, 0, p("an owl")),
        job("{J4}", "queued", 4, 0, p("a hare"))));
      announcer.flush();
      const atOpen = said.length;
      store.applyMessage(event("{J1}", "processing", 2, 1));
      for (const [id, place] of [["{J2}", 1], ["{J3}", 2], ["{J4}", 3]]) {{
        store.applyMessage({{ type: "position", job_id: id, queue_position: place, eta_s: 9 }});
      }}
      announcer.flush();
      return [atOpen, ...said];
    """,
    )
    assert result == [
        0,
        [
            "Your image 'a red fox' is being generated. 3 of your images moved in line; your"
            " image 'a grey wolf' is now 1st in line.",
            [],
        ],
    ]


async def test_done_and_failed_are_announced_with_the_reason_and_only_the_latest_place(
    page: Any,
) -> None:
    """Issue 16 item 3: a job that moves twice in one window is announced once, at its latest
    place; a finished job "is done", a failed one says why; a long prompt is named in a few
    words; a job whose details are not read yet waits until they are."""
    long_prompt = "a lighthouse on a cliff at dusk, oil painting, stormy sea, seagulls"
    result = await run(
        page,
        f"""
      store.applySnapshot(list(1, job("{J1}", "processing", 0, 1, {{ prompt: "{long_prompt}" }}),
        job("{J2}", "processing", 0, 1, {{ prompt: "a cat" }}),
        job("{J3}", "queued", 3, 0, {{ prompt: "a dog" }})));
      store.applyMessage({{ type: "position", job_id: "{J3}", queue_position: 2, eta_s: 5 }});
      store.applyMessage({{ type: "position", job_id: "{J3}", queue_position: 1, eta_s: 1 }});
      store.applyMessage(event("{J1}", "complete", 2, 5, 0, {{ image_url: "/x" }}));
      store.applyMessage(event("{J2}", "error", 3, 5, 0, {{ error: "out of GPU memory" }}));
      store.applyMessage(event("{J4}", "complete", 4, 5));
      announcer.flush();
      return said;
    """,
    )
    assert result == [
        [
            "Your image 'a lighthouse on a cliff at dusk, oil…' is done. Your image 'a cat'"
            " failed: out of GPU memory. Your image 'a dog' is now 1st in line.",
            [J1, J2],
        ]
    ]


async def test_opening_another_conversation_drops_what_was_not_said_yet(page: Any) -> None:
    """Issue 16 item 3: changes pending in the window belong to the conversation they were of;
    opening another (reset) says nothing of them."""
    result = await run(
        page,
        f"""
      store.applySnapshot(list(1, job("{J1}", "queued", 2, 0)));
      store.applyMessage({{ type: "position", job_id: "{J1}", queue_position: 1, eta_s: 1 }});
      store.reset("{OTHER}");
      announcer.flush();
      return said.length;
    """,
    )
    assert result == 0
