"""`gpuqueue web`: serve create_app on host:port until SIGINT/SIGTERM, then shut down cleanly."""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from queueing.config import Settings
from queueing.session_check import refuse_transaction_pooling

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


_SECRET = re.compile(r"(token=|bearer\s+)[^\s&'\"]+", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """aiohttp logs the first bytes of a request it cannot parse: never let a token through."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if exc is not None:
            message = f"{message}: {type(exc).__name__}: {exc}"
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = _SECRET.sub(r"\1<redacted>", message), None
        return True


def _redact_server_logs() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RedactTokens) for f in server_log.filters):
        server_log.addFilter(RedactTokens())


def make_runner(app: web.Application) -> web.AppRunner:
    _redact_server_logs()
    return web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("gpuqueue.access"),
        shutdown_timeout=5.0,
    )


def serve(settings: Settings, url: str, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Blocks until SIGINT or SIGTERM; open sockets are closed with GOING_AWAY on the way out."""
    refuse_transaction_pooling(url, "gpuqueue web")
    app = create_app(settings, url)
    _redact_server_logs()
    web.run_app(
        app,
        host=host,
        port=port,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("gpuqueue.access"),
        shutdown_timeout=5.0,
        print=lambda _: log.info("gpuqueue web listening on http://%s:%d", host, port),
    )
