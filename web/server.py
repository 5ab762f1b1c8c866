"""`gpuqueue web`: serve create_app on host:port until SIGINT/SIGTERM, then shut down cleanly."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from queueing.config import Settings

from .app import create_app

log = logging.getLogger(__name__)


class AccessLogger(AbstractAccessLogger):
    """One line per request, without the query string: ?token= must never reach a log.

    Successes log at DEBUG (a busy server would spend its time logging), failures at INFO.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        level = logging.DEBUG if response.status < 400 else logging.INFO
        if self.logger.isEnabledFor(level):
            self.logger.log(
                level,
                "%s %s %s %d %.1fms",
                request.remote,
                request.method,
                request.path,
                response.status,
                time * 1000,
            )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG) or self.logger.isEnabledFor(logging.INFO)


def make_runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("gpuqueue.access"),
        shutdown_timeout=5.0,
    )


def serve(settings: Settings, url: str, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Blocks until SIGINT or SIGTERM; open sockets are closed with GOING_AWAY on the way out."""
    app = create_app(settings, url)
    web.run_app(
        app,
        host=host,
        port=port,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("gpuqueue.access"),
        shutdown_timeout=5.0,
        print=lambda _: log.info("gpuqueue web listening on http://%s:%d", host, port),
    )
