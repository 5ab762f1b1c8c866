"""Signed image links (issue 10, item 10; contract: Images): image_url is
`/api/jobs/{id}/image?exp=…&sig=…`, it opens that one image without the Authorization header
until it expires, every web server of one database accepts the others' links, and a bearer token
in an image URL's query is never taken."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp import web
from aiohttp.test_utils import TestClient

from harness.waiting import eventually
from queueing import db
from tests.integration.web_support import (
    PNG,
    HandWorker,
    User,
    enqueue,
    frames_until,
    make_user,
    new_conversation,
    running_app,
    subscribe,
    web_settings,
)
from tests.reliability.hostile import judge

Client = TestClient[web.Request, web.Application]
SECRET = "s" * 40


async def complete_job(client: Client, user: User, worker: HandWorker) -> dict[str, Any]:
    """A job of `user`, completed by the hand worker, as GET /api/jobs/{id} shows it."""
    conversation_id = await new_conversation(client, user)
    job = await enqueue(client, user, conversation_id)
    claim = await worker.claim()
    assert str(claim.job_id) == job["job_id"]
    await worker.complete(claim)
    done = await job_json(client, user, job["job_id"])
    assert done["status"] == "complete", done
    return done


async def job_json(client: Client, user: User, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = await (
        await client.get(f"/api/jobs/{job_id}", headers=user.headers)
    ).json()
    return job


def link_parts(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


async def test_image_url_is_a_signed_link_that_needs_no_header_until_it_expires(
    database_url: str, pool: db.Pool, worker: HandWorker
) -> None:
    """The job's image_url (GET job, the listing, the WebSocket's complete event) is a signed
    link expiring in about an hour; it serves the PNG with no header, to anyone who has it, and
    may be cached no longer than it lives; the plain route with the header still works."""
    async with running_app(database_url) as client:
        alice = await make_user(pool, "alice")
        conversation_id = await new_conversation(client, alice)
        ws = await client.ws_connect("/ws", headers=alice.headers)
        await subscribe(ws, conversation_id=conversation_id)
        job = await enqueue(client, alice, conversation_id)
        signed_after = time.time()  # every link below is signed after this and before the check
        await worker.complete(await worker.claim())
        frames = await frames_until(ws, lambda f: f.get("type") == "complete")
        read = await (await client.get(f"/api/jobs/{job['job_id']}", headers=alice.headers)).json()
        listed = await client.get(
            f"/api/conversations/{conversation_id}/jobs", headers=alice.headers
        )
        [in_list] = (await listed.json())["jobs"]
        plain = f"/api/jobs/{job['job_id']}/image"
        for url in (frames[-1]["image_url"], read["image_url"], in_list["image_url"]):
            path, query = link_parts(url)
            assert path == plain and set(query) == {"exp", "sig"}, url
            assert int(query["exp"]) - signed_after >= 3600, url
            assert int(query["exp"]) - time.time() <= 3600 + 60, url
            image = await client.get(url)  # no Authorization header
            assert image.status == 200 and image.content_type == "image/png", url
            assert await image.read() == PNG
            max_age = int(image.headers["Cache-Control"].split("max-age=")[1].split(",")[0])
            assert 0 < max_age <= 3600 + 61, image.headers["Cache-Control"]
        with_header = await client.get(plain, headers=alice.headers)
        assert with_header.status == 200 and await with_header.read() == PNG
        await ws.close()


async def test_a_forged_altered_or_expired_link_is_refused_with_a_clear_error(
    database_url: str, pool: db.Pool, worker: HandWorker
) -> None:
    """A wrong or missing signature, a link moved to another job, a changed or malformed expiry:
    403 invalid_link; a link past its expiry: 403 link_expired; always the JSON error shape,
    never a stack trace."""
    settings = web_settings(image_link_ttl_s=2)
    async with running_app(database_url, settings=settings) as client:
        alice = await make_user(pool, "alice")
        first = await complete_job(client, alice, worker)
        second = await complete_job(client, alice, worker)
        path, query = link_parts(first["image_url"])
        other_path, _ = link_parts(second["image_url"])
        bad = [
            (path, {**query, "sig": query["sig"][:-2] + "AA"}),
            (path, {"exp": query["exp"]}),
            (path, {"sig": query["sig"]}),
            (other_path, query),  # the signature is for the first job only
            (path, {**query, "exp": str(int(query["exp"]) + 3600)}),
            (path, {**query, "exp": "1e9"}),
            (path, {**query, "exp": "9" * 40}),
            (path, {**query, "sig": "é" * 10}),
        ]
        for target, params in bad:
            response = await client.get(f"{target}?{urlencode(params)}")
            answer = await judge(response, f"{target} {params}")
            assert answer.status == 403 and answer.body["error"]["code"] == "invalid_link", (
                params,
                answer.text,
            )
        assert (await client.get(first["image_url"])).status == 200

        async def expired() -> Any:
            response = await client.get(first["image_url"])
            return response.status == 403 and await judge(response, "expired link")

        answer = await eventually(expired, within=10, interval=0.1)
        assert answer.body["error"]["code"] == "link_expired", answer.text
        assert "expired" in answer.body["error"]["message"]
        fresh = await (
            await client.get(f"/api/jobs/{first['job_id']}", headers=alice.headers)
        ).json()
        assert (await client.get(fresh["image_url"])).status == 200  # reading the job again helps


async def test_a_token_in_an_image_url_is_never_accepted(
    database_url: str, pool: db.Pool, worker: HandWorker
) -> None:
    """?token= on the image route is refused (401, and no image), whatever the token: only the
    Authorization header or a signed link opens an image."""
    async with running_app(database_url) as client:
        alice = await make_user(pool, "alice")
        done = await complete_job(client, alice, worker)
        plain = f"/api/jobs/{done['job_id']}/image"
        response = await client.get(plain, params={"token": alice.token})
        answer = await judge(response, "image ?token=")
        assert answer.status == 401 and answer.body["error"]["code"] == "unauthorized", answer.text
        assert "Authorization" in answer.body["error"]["message"]


async def test_every_web_server_of_one_database_accepts_the_others_links(
    database_url: str, pool: db.Pool, worker: HandWorker
) -> None:
    """Without a configured secret the first server stores one in the database and the others
    use it, so a link made by one server opens on another; servers configured with one secret
    agree too; a server with a different secret refuses the link."""
    async with running_app(database_url) as first, running_app(database_url) as second:
        alice = await make_user(pool, "alice")
        done = await complete_job(first, alice, worker)
        assert (await second.get(done["image_url"])).status == 200
        again = await (
            await second.get(f"/api/jobs/{done['job_id']}", headers=alice.headers)
        ).json()
        assert (await first.get(again["image_url"])).status == 200
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT name, length(secret) AS bytes FROM web_secrets")
        assert await cur.fetchall() == [{"name": "image_links", "bytes": 32}]

    configured = web_settings(image_secret=SECRET)
    async with (
        running_app(database_url, settings=configured) as first,
        running_app(database_url, settings=configured) as second,
        running_app(database_url, settings=web_settings(image_secret="t" * 40)) as stranger,
    ):
        link = (await job_json(first, alice, done["job_id"]))["image_url"]
        assert (await second.get(link)).status == 200
        refused = await judge(await stranger.get(link), "another secret's link")
        assert refused.status == 403 and refused.body["error"]["code"] == "invalid_link"
