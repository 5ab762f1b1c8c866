"""create_app: the aiohttp application, its long-lived resources and its response headers.

The pool and the fan-out live in cleanup_ctx generators, pool first and broadcaster second, so
the LISTEN task stops before the pool closes. Open WebSockets are closed with GOING_AWAY when
the server shuts down.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web

from queueing import db, web_secrets
from queueing.config import Settings
from queueing.models import CapabilitiesCache, ModelsCache
from queueing.positions import EtaCache
from queueing.tokens import TokenLookups

from . import api, metrics, ws
from .errors import error_middleware
from .image_links import SECRET_NAME, ImageLinks
from .keys import (
    BROADCASTER,
    CAPABILITIES_CACHE,
    CLIENTS,
    DATABASE_URL,
    ETA_CACHE,
    IMAGE_LINKS,
    MODELS_CACHE,
    OPTIONS,
    POOL,
    SETTINGS,
    TOKEN_WATCH,
    TOKENS,
    WebOptions,
)
from .live import Broadcaster, Client
from .token_watch import TokenWatch
from .validation import MAX_BODY_BYTES, check_settings

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def create_app(settings: Settings, url: str, options: WebOptions | None = None) -> web.Application:
    check_settings(settings)
    app = web.Application(
        middlewares=[error_middleware, api.auth_middleware], client_max_size=MAX_BODY_BYTES
    )
    app[SETTINGS] = settings
    app[DATABASE_URL] = url
    app[OPTIONS] = options or WebOptions()
    app[ETA_CACHE] = EtaCache(app[OPTIONS].eta_ttl_s)
    app[MODELS_CACHE] = ModelsCache(settings.default_model, app[OPTIONS].eta_ttl_s)
    app[CAPABILITIES_CACHE] = CapabilitiesCache(app[OPTIONS].eta_ttl_s)
    app[CLIENTS] = weakref.WeakSet()
    app[metrics.METRICS] = metrics.Metrics(settings.default_model, app[CLIENTS])
    app.cleanup_ctx.append(_pool_ctx)
    app.cleanup_ctx.append(_image_links_ctx)
    app.cleanup_ctx.append(_broadcaster_ctx)
    app.cleanup_ctx.append(_token_watch_ctx)
    app.on_shutdown.append(_close_websockets)
    app.on_response_prepare.append(_security_headers)
    api.add_routes(app)
    app.router.add_get("/metrics", metrics.scrape)
    app.router.add_get("/ws", ws.websocket)
    return app


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = db.make_pool(
        app[DATABASE_URL], "gpuqueue-web", min_size=2, max_size=max(2, settings.web_pool_size)
    )
    await pool.open(wait=True, timeout=30)
    app[POOL] = pool
    app[TOKENS] = TokenLookups(pool)
    yield
    await pool.close()


async def _image_links_ctx(app: web.Application) -> AsyncIterator[None]:
    """The configured secret, else the one every web server of this database shares."""
    settings = app[SETTINGS]
    if settings.image_secret is not None:
        secret = settings.image_secret.encode()
    else:
        secret = await web_secrets.shared_secret(app[POOL], SECRET_NAME)
    app[IMAGE_LINKS] = ImageLinks(secret, settings.image_link_ttl_s)
    yield


async def _broadcaster_ctx(app: web.Application) -> AsyncIterator[None]:
    broadcaster = Broadcaster(
        app[POOL],
        app[DATABASE_URL],
        eta_cache=app[ETA_CACHE],
        image_links=app[IMAGE_LINKS],
        outbox_size=app[OPTIONS].outbox_size,
        poll_interval_s=app[SETTINGS].poll_interval_s,
    )
    broadcaster.stats.deliveries.observer = app[metrics.METRICS].jobs
    await broadcaster.start()
    app[BROADCASTER] = broadcaster
    yield
    await broadcaster.stop()


async def _token_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    watch = TokenWatch(app[POOL], app[BROADCASTER], app[OPTIONS].token_check_s)
    await watch.start()
    app[TOKEN_WATCH] = watch
    yield
    await watch.stop()


async def _close_websockets(app: web.Application) -> None:
    registered = app[CLIENTS]
    clients: list[Client] = list(registered)
    for client in clients:
        client.kill(WSCloseCode.GOING_AWAY, "server shutdown")
    if clients:
        await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in clients], timeout=2.0)


def _page_csp(request: web.BaseRequest) -> str:
    host = request.host if _HOST.match(request.host) else ""
    sockets = f" ws://{host} wss://{host}" if host else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"connect-src 'self'{sockets}; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


async def _security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """On every response, including files, errors and the WebSocket upgrade."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    if request.path.startswith("/api/"):
        headers.setdefault("Cache-Control", "no-store")
        headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    else:
        headers.setdefault("Content-Security-Policy", _page_csp(request))


__all__ = ["Broadcaster", "create_app"]
