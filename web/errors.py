"""Every error leaves as {"error": {"code", "message"}}: never a stack trace, never a 500 for bad
input. Unexpected exceptions become a 500 with no details, and are logged here."""

from __future__ import annotations

import logging
from http import HTTPStatus

import psycopg
from aiohttp import web
from aiohttp.typedefs import Handler
from psycopg_pool import PoolTimeout

from queueing.errors import QueueError

from .json_text import dumps

log = logging.getLogger(__name__)

# The code a bare HTTP status gets when nothing more precise was said.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """A request refused at the edge; nothing was written."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def invalid(message: str, code: str = "invalid") -> ApiError:
    return ApiError(422, code, message)


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, "not_found", message)


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=dumps(error_body(code, message), ascii_only=True),
        content_type="application/json",
        headers=headers,
    )


def _http_message(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "no such resource"
    if exc.status == 413:
        return "the request body is too large (64 KiB at most)"
    text = exc.text or ""
    if text and not text.startswith(f"{exc.status}:"):
        return text
    return exc.reason or HTTPStatus(exc.status).phrase


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, headers)
    except QueueError as exc:
        return error_response(exc.status, exc.code, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(
            exc.status, _CODES.get(exc.status, "error"), _http_message(exc), headers
        )
    except (PoolTimeout, psycopg.OperationalError) as exc:
        log.warning("%s %s: database unavailable (%s)", request.method, request.path, exc)
        return error_response(503, "unavailable", "the database is not answering; try again soon")
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "internal", "something went wrong on our side")
