"""The HTTP API (contract: HTTP API). Handlers validate at the edge, call queueing/, and answer
JSON; the database scopes every read and change to the actor, so another user's ids are 404."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from queueing import conversations, db, images, jobs, positions, workers
from queueing.actors import Actor
from queueing.errors import QueueFull
from queueing.rows import JobJson
from queueing.states import JobStatus

from . import auth, validation
from .errors import ApiError, not_found
from .json_text import dumps
from .keys import (
    ACTOR,
    BROADCASTER,
    CAPABILITIES_CACHE,
    ETA_CACHE,
    IMAGE_LINKS,
    MODELS_CACHE,
    OPTIONS,
    POOL,
    SETTINGS,
    TOKENS,
)
from .openapi import openapi

STATIC_DIR = Path(__file__).resolve().parent / "static"


def json_response(
    value: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(value, status=status, headers=headers, dumps=dumps)


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every /api request needs a valid token in the Authorization header, except a signed image
    link, which job_image checks itself. A token in a URL is never taken: links get shared."""
    if request.path.startswith("/api/") and not _signed_image_link(request):
        token = auth.header_token(request)
        if token is None and "token" in request.query:
            raise ApiError(
                401,
                "unauthorized",
                "a token in the URL is not accepted: send it as Authorization: Bearer <token> "
                "(images: use the job's signed image_url)",
            )
        request[ACTOR] = await auth.authenticate(request.app[TOKENS], token)
    response: web.StreamResponse = await handler(request)
    return response


def _signed_image_link(request: web.Request) -> bool:
    query = request.query
    return request.match_info.handler is job_image and ("sig" in query or "exp" in query)


def _actor(request: web.Request) -> Actor:
    return request[ACTOR]


def _signed(request: web.Request, job: JobJson) -> dict[str, Any]:
    """Job JSON as it leaves the server: its image_url a signed link (contract: Images)."""
    return request.app[IMAGE_LINKS].sign(job)


# -- the page and health ----------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise not_found("the page is not built yet (web/static/index.html is missing)")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(2.0):
            await db.fetch_one(request.app[POOL], "ping")
    except (psycopg.Error, PoolTimeout, TimeoutError, OSError):
        return json_response({"ok": False}, status=503)
    return json_response({"ok": True})


async def me(request: web.Request) -> web.Response:
    actor = _actor(request)
    return json_response({"user": actor.name, "user_id": actor.user_id, "is_admin": actor.is_admin})


# -- conversations and messages ---------------------------------------------------------------


async def create_conversation(request: web.Request) -> web.Response:
    body = await validation.read_json_object(request, allow_empty=True)
    title = validation.conversation_title(body)
    row = await conversations.create_conversation(
        request.app[POOL], actor=_actor(request), title=title
    )
    return json_response(row, status=201, headers={"Location": f"/api/conversations/{row['id']}"})


async def list_conversations(request: web.Request) -> web.Response:
    """Newest first; an admin sees only its own unless it asks for ?all=true."""
    actor = _actor(request)
    everyone = actor.is_admin and request.query.get("all", "").lower() in ("1", "true", "yes")
    rows = await conversations.list_conversations(request.app[POOL], actor=actor, everyone=everyone)
    return json_response({"conversations": rows})


async def get_conversation(request: web.Request) -> web.Response:
    conversation_id = validation.parse_uuid(request.match_info["id"], "conversation")
    row = await conversations.get_conversation(
        request.app[POOL],
        conversation_id,
        actor=_actor(request),
        placer=request.app[BROADCASTER].placing,
    )
    return json_response(row)


async def rename_conversation(request: web.Request) -> web.Response:
    conversation_id = validation.parse_uuid(request.match_info["id"], "conversation")
    actor, pool = _actor(request), request.app[POOL]
    body = await validation.read_json_object(request)
    try:
        title = validation.conversation_title(body, required=True)
    except ApiError:
        if not await conversations.conversation_visible(pool, conversation_id, actor=actor):
            raise not_found(f"conversation {conversation_id} not found") from None  # as any route
        raise
    row = await conversations.rename_conversation(pool, conversation_id, title, actor=actor)
    return json_response(row)


async def delete_conversation(request: web.Request) -> web.Response:
    """Cancel its active jobs, wait (briefly) until this process's fan-out has sent their
    canceled events, then remove it with everything in it: the events go with the jobs, so
    they must be out before the rows are. Other web processes read them just as fast."""
    conversation_id = validation.parse_uuid(request.match_info["id"], "conversation")
    actor, pool, broadcaster = _actor(request), request.app[POOL], request.app[BROADCASTER]
    canceled = await conversations.cancel_conversation_jobs(pool, conversation_id, actor=actor)
    routed = broadcaster.routed_seq
    waiters = [(j, broadcaster.watch(j)) for j, seq in canceled.items() if seq > routed]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(request.app[OPTIONS].cancel_wait_s):
                await asyncio.gather(*(waiter.wait() for _, waiter in waiters))
    finally:
        for job_id, waiter in waiters:
            broadcaster.unwatch(job_id, waiter)
    await conversations.delete_conversation(pool, conversation_id, actor=actor)
    return web.Response(status=204)


async def merge_metadata(request: web.Request) -> web.Response:
    message_id = validation.parse_uuid(request.match_info["id"], "message")
    patch = validation.metadata_patch(await validation.read_json_object(request))
    message = await conversations.merge_metadata(
        request.app[POOL], message_id, patch, actor=_actor(request)
    )
    return json_response(message)


# -- jobs -------------------------------------------------------------------------------------


async def enqueue(request: web.Request) -> web.Response:
    conversation_id = validation.parse_uuid(request.match_info["id"], "conversation")
    actor, settings, pool = _actor(request), request.app[SETTINGS], request.app[POOL]
    job_request = validation.image_request(
        await validation.read_json_object(request),
        actor=actor,
        settings=settings,
        models=await request.app[CAPABILITIES_CACHE].get(pool),
    )
    try:
        job = await jobs.enqueue(
            pool,
            conversation_id,
            job_request,
            actor=actor,
            max_queued=settings.max_queued_per_user,
            default_model=settings.default_model,
            eta=await request.app[ETA_CACHE].get(pool),
            placer=request.app[BROADCASTER].placing,
        )
    except QueueFull:
        limit = settings.max_queued_per_user
        raise ApiError(
            429,
            "queue_full",
            f"you already have {limit} jobs queued, the most one user may have at once; "
            "wait for some to start",
        ) from None
    return json_response(
        _signed(request, job), status=202, headers={"Location": f"/api/jobs/{job['job_id']}"}
    )


async def list_jobs(request: web.Request) -> web.Response:
    """The page's reload snapshot: the jobs as of event `seq`, exactly (one statement), so
    subscribing with since_seq=seq brings each later transition once and no earlier one."""
    conversation_id = validation.parse_uuid(request.match_info["id"], "conversation")
    pool = request.app[POOL]
    listed = await jobs.list_jobs(
        pool,
        conversation_id,
        actor=_actor(request),
        eta=await request.app[ETA_CACHE].get(pool),
        placer=request.app[BROADCASTER].placing,
    )
    jobs_out = [_signed(request, row) for row in listed["jobs"]]
    return json_response({"jobs": jobs_out, "seq": listed["seq"]})


async def get_job(request: web.Request) -> web.Response:
    job_id = validation.parse_uuid(request.match_info["id"], "job")
    pool = request.app[POOL]
    job = await jobs.get_job(
        pool,
        job_id,
        actor=_actor(request),
        eta=await request.app[ETA_CACHE].get(pool),
        placer=request.app[BROADCASTER].placing,
    )
    return json_response(_signed(request, job))


async def job_image(request: web.Request) -> web.Response:
    """The PNG: through a signed link (exp, sig) for whoever has it until it expires, cached no
    longer than that; else for its owner, with the Authorization header."""
    job_id = validation.parse_uuid(request.match_info["id"], "job")
    pool = request.app[POOL]
    if _signed_image_link(request):
        query = request.query
        left_s = request.app[IMAGE_LINKS].check(job_id, query.get("exp"), query.get("sig"))
        png = await images.job_image(pool, job_id)
        cache = f"private, max-age={max(1, int(left_s))}, immutable"
    else:
        png = await jobs.job_image(pool, job_id, actor=_actor(request))
        cache = "private, max-age=31536000, immutable"
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": cache})


async def cancel_job(request: web.Request) -> web.Response:
    """A queued job is canceled at once. A running one is asked to stop: we wait a little for its
    worker to end it (200, canceled) and otherwise answer 202 with cancel_requested true."""
    job_id = validation.parse_uuid(request.match_info["id"], "job")
    actor, pool = _actor(request), request.app[POOL]
    broadcaster, eta_cache = request.app[BROADCASTER], request.app[ETA_CACHE]
    waiter = broadcaster.watch(job_id)
    try:
        job = await jobs.cancel(
            pool,
            job_id,
            actor=actor,
            eta=await eta_cache.get(pool),
            placer=broadcaster.placing,
        )
        deadline = time.monotonic() + request.app[OPTIONS].cancel_wait_s
        while job["status"] == JobStatus.PROCESSING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return json_response(_signed(request, job), status=202)
            try:
                # The fan-out sees the final event; the poll is the safety net.
                async with asyncio.timeout(min(remaining, 0.5)):
                    await waiter.wait()
            except TimeoutError:
                pass
            waiter.clear()
            job = await jobs.get_job(pool, job_id, actor=actor, eta=await eta_cache.get(pool))
    finally:
        broadcaster.unwatch(job_id, waiter)
    if job["status"] != JobStatus.CANCELED:
        raise ApiError(409, "conflict", f"job {job_id} ended {job['status']} before it could stop")
    return json_response(_signed(request, job))


async def move_job(request: web.Request) -> web.Response:
    """{"to": "front"}: the job takes its owner's earliest place among their queued jobs of its
    model; no other user's job moves (409 when it is not queued)."""
    job_id = validation.parse_uuid(request.match_info["id"], "job")
    actor, pool = _actor(request), request.app[POOL]
    body = await validation.read_json_object(request)
    try:
        validation.move_request(body)
    except ApiError:
        await jobs.get_job(pool, job_id, actor=actor)  # another user's job: 404, as any route
        raise
    job = await jobs.move_to_front(
        pool,
        job_id,
        actor=actor,
        eta=await request.app[ETA_CACHE].get(pool),
        placer=request.app[BROADCASTER].placing,
    )
    return json_response(_signed(request, job))


# -- the queue --------------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    """The models a request may name, with their live workers and queued and processing jobs."""
    return json_response({"models": await request.app[MODELS_CACHE].get(request.app[POOL])})


async def queue(request: web.Request) -> web.Response:
    """Counts and workers. Users see each worker's device and whether it is busy; admins also
    see which worker (id, host, pid) holds which GPU lock, for which job, and for how long."""
    pool, actor = request.app[POOL], _actor(request)
    counts = await positions.queue_counts(pool)
    live = await workers.live_workers(pool)
    body: dict[str, Any] = {"queued": counts["queued"], "processing": counts["processing"]}
    if actor.is_admin:
        body["oldest_queued_s"] = counts["oldest_queued_s"]
        body["workers"] = [
            {
                "worker_id": w["worker_id"],
                "host": w["host"],
                "device": w["device"],
                "backend": w["backend"],
                "model": w["model"],
                "hostname": w["hostname"],
                "pid": w["pid"],
                "started_at": w["started_at"],
                "busy": w["job_id"] is not None,
                "job_id": w["job_id"],
                "lock_held_s": w["lock_held_s"],
            }
            for w in live
        ]
    else:
        body["workers"] = [{"device": w["device"], "busy": w["job_id"] is not None} for w in live]
    return json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/conversations", list_conversations)
    app.router.add_post("/api/conversations", create_conversation)
    app.router.add_get("/api/conversations/{id}", get_conversation)
    app.router.add_patch("/api/conversations/{id}", rename_conversation)
    app.router.add_delete("/api/conversations/{id}", delete_conversation)
    app.router.add_post("/api/conversations/{id}/images", enqueue)
    app.router.add_get("/api/conversations/{id}/jobs", list_jobs)
    app.router.add_get("/api/jobs/{id}", get_job)
    app.router.add_get("/api/jobs/{id}/image", job_image)
    app.router.add_post("/api/jobs/{id}/cancel", cancel_job)
    app.router.add_post("/api/jobs/{id}/move", move_job)
    app.router.add_get("/api/models", list_models)
    app.router.add_patch("/api/messages/{id}/metadata", merge_metadata)
    app.router.add_get("/api/queue", queue)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
