"""`gpuqueue.client`: the HTTP API and the WebSocket from Python, for a chat backend or a script.

    async with Client("http://127.0.0.1:8080", token) as gq:
        job = await gq.submit(conversation_id, "a red fox", steps=20)
        done = await gq.wait(job["job_id"], timeout=300)

Jobs and events are the server's JSON as plain dicts (README: HTTP API, WebSocket). A refused
request raises a `GpuqueueError` subclass carrying the server's error code. `events()` follows a
conversation (or some jobs) and survives dropped connections and restarted web processes by
itself: it comes back with `since_seq`, so no event is lost or repeated.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any, TypeAlias

import aiohttp

Job: TypeAlias = dict[str, Any]
Frame: TypeAlias = dict[str, Any]

FINAL_STATUSES = frozenset({"complete", "error", "canceled"})
CLOSE_UNAUTHORIZED = 4401  # the token was revoked or expired: reconnecting cannot help


class GpuqueueError(Exception):
    """The server refused a request: `code` is its error code (`not_found`, `queue_full`, ...),
    `status` the HTTP status (None for a refused WebSocket subscription)."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class BadRequest(GpuqueueError):
    """400: the request was not understood (not JSON, a bad frame)."""


class Unauthorized(GpuqueueError):
    """401, or a socket closed with 4401: the token is unknown, revoked or expired."""


class Forbidden(GpuqueueError):
    """403: not allowed (an image link that is bad or expired, an admin-only action)."""


class NotFound(GpuqueueError):
    """404: no such conversation or job, or one of another user."""


class Conflict(GpuqueueError):
    """409: the job is not in a state that allows it (cancel a finished job, move a running one)."""


class PayloadTooLarge(GpuqueueError):
    """413: the body or the merged metadata is over its limit."""


class Invalid(GpuqueueError):
    """422: a field is invalid, unknown or reserved; the model is unknown; the size unsupported."""


class QueueFull(GpuqueueError):
    """429: the user already has the most jobs queued that one user may have."""


class Unavailable(GpuqueueError):
    """503: the database is not answering; try again."""


class ServerError(GpuqueueError):
    """Any other status of 500 or above: something went wrong on the server."""


class Unreachable(GpuqueueError):
    """No answer at all: the server could not be reached (code `unreachable`, no status)."""


_BY_STATUS: dict[int, type[GpuqueueError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Invalid,
    429: QueueFull,
    503: Unavailable,
}
# A refused WebSocket frame names only its code.
_BY_FRAME_CODE: dict[str, type[GpuqueueError]] = {
    "bad_frame": BadRequest,
    "unknown_op": BadRequest,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "invalid": Invalid,
    "unknown_fields": Invalid,
    "unavailable": Unavailable,
    "internal": ServerError,
}


def error_of(status: int, body: str) -> GpuqueueError:
    """The typed error of an HTTP answer `status` with `body` (the server's error shape, or
    anything a proxy in between said)."""
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{status}", body.strip()[:200] or f"HTTP {status}"
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else GpuqueueError)
    return kind(code, message, status)


class Client:
    """One server and one token. Use it as `async with Client(...)`, or call `close()`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        request_timeout_s: float = 30.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        heartbeat_s: float = 15.0,
    ) -> None:
        """`reconnect_*`: how long `events()` waits before reconnecting, doubling from min to
        max while the server stays away; `heartbeat_s`: how often a quiet socket is pinged, so
        a connection cut without a word is noticed within about 1.5 times that."""
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.heartbeat_s = heartbeat_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Made on first use, inside the running event loop, as aiohttp wants."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self._token}"}, timeout=self._timeout
            )
        return self._session

    # -- the HTTP API ---------------------------------------------------------------------------

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """`method path` with a JSON body; the JSON answer, or the typed error of a refusal."""
        try:
            async with self.session.request(method, self.base_url + path, json=body) as response:
                text = await response.text()
                if response.status >= 400:
                    raise error_of(response.status, text)
                return json.loads(text) if text else None
        except aiohttp.ClientConnectionError as exc:
            raise Unreachable("unreachable", f"{method} {path}: {exc}") from exc

    async def create_conversation(self, title: str | None = None) -> dict[str, Any]:
        """A new conversation (`{"id", "title", "created_at"}`)."""
        body = {} if title is None else {"title": title}
        answer: dict[str, Any] = await self.request("POST", "/api/conversations", body)
        return answer

    async def submit(self, conversation_id: str, prompt: str, **params: Any) -> Job:
        """Queue an image request; `params` are the request's other fields (model, width,
        height, steps, seed, negative_prompt, guidance_scale, timeout_s, max_attempts,
        priority). The job as accepted, with its queue_position."""
        path = f"/api/conversations/{conversation_id}/images"
        job: Job = await self.request("POST", path, {"prompt": prompt, **params})
        return job

    async def job(self, job_id: str) -> Job:
        job: Job = await self.request("GET", f"/api/jobs/{job_id}")
        return job

    async def cancel(self, job_id: str) -> Job:
        """The canceled job; a running job whose worker has not stopped it within ~3 s comes
        back still processing with `cancel_requested: true` (it ends canceled soon after).
        Conflict when the job had already finished."""
        job: Job = await self.request("POST", f"/api/jobs/{job_id}/cancel")
        return job

    async def move(self, job_id: str, to: str = "front") -> Job:
        """Put a queued job first among its owner's queued jobs of its model (Conflict when it
        is not queued)."""
        job: Job = await self.request("POST", f"/api/jobs/{job_id}/move", {"to": to})
        return job

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """The job once it is complete, error or canceled, followed over the WebSocket (not
        polled); TimeoutError after `timeout` seconds (None: no limit)."""
        frames = EventStream(self, {"job_ids": [job_id]}, None).frames()
        try:
            async with asyncio.timeout(timeout):
                async for frame in frames:
                    # Once subscribed, every later transition arrives on the socket; one that
                    # came before shows in the job read now. So neither can be missed.
                    if frame["type"] == "subscribed" or frame.get("status") in FINAL_STATUSES:
                        job = await self.job(job_id)
                        if job["status"] in FINAL_STATUSES:
                            return job
        finally:
            await frames.aclose()
        raise AssertionError("unreachable: the event stream never ends by itself")

    # -- the WebSocket --------------------------------------------------------------------------

    def events(
        self,
        *,
        conversation_id: str | None = None,
        job_ids: Sequence[str] | None = None,
        since_seq: int | None = None,
    ) -> EventStream:
        """Follow one conversation or some jobs (up to 100): every transition event after
        `since_seq` (None: from now), then live; `progress` and `position` frames too. It
        reconnects by itself, resuming after the last event it yielded."""
        if (conversation_id is None) == (job_ids is None):
            raise ValueError("follow either a conversation_id or job_ids")
        if conversation_id is not None:
            return EventStream(self, {"conversation_id": conversation_id}, since_seq)
        return EventStream(self, {"job_ids": list(job_ids or ())}, since_seq)


class EventStream:
    """An async iterator over a subscription's frames that outlives its connections.

    `last_seq` is the seq up to which every event has been yielded (what to store, to resume
    later with `events(since_seq=...)`); `connections` counts the sockets it has opened.
    """

    def __init__(self, client: Client, follows: dict[str, Any], since_seq: int | None) -> None:
        self._client = client
        self._follows = follows
        self.last_seq = since_seq
        self.connections = 0
        self._frames: AsyncGenerator[Frame, None] | None = None

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Frame:
        if self._frames is None:
            self._frames = self.frames()
        while True:
            frame = await anext(self._frames)
            if frame["type"] != "subscribed":
                return frame

    async def aclose(self) -> None:
        """Close the socket (the iterator ends)."""
        frames, self._frames = self._frames, None
        if frames is not None:
            await frames.aclose()

    async def frames(self) -> AsyncGenerator[Frame, None]:
        """Every frame, `subscribed` included (once per connection, when it has caught up)."""
        client = self._client
        delay = client.reconnect_min_s
        while True:
            try:
                async with client.session.ws_connect(
                    client.base_url + "/ws",
                    params={"token": client._token},
                    heartbeat=client.heartbeat_s,
                ) as ws:
                    self.connections += 1
                    subscribe = {"op": "subscribe", **self._follows}
                    if self.last_seq is not None:
                        subscribe["since_seq"] = self.last_seq
                    await ws.send_json(subscribe)
                    async for msg in ws:
                        if msg.type is not aiohttp.WSMsgType.TEXT:
                            break
                        frame = self._accept(json.loads(msg.data))
                        if frame is None:
                            continue
                        if frame["type"] == "subscribed":
                            delay = client.reconnect_min_s  # this connection works
                        yield frame
                    if ws.close_code == CLOSE_UNAUTHORIZED:
                        raise Unauthorized("unauthorized", "the token was revoked or expired")
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 401:
                    raise Unauthorized("unauthorized", "the token is not valid", 401) from exc
                if 400 <= exc.status < 500:
                    raise error_of(exc.status, exc.message) from exc
            except _Retry:
                pass
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass  # the server went away, or cannot be reached yet: try again
            await asyncio.sleep(delay)
            delay = min(delay * 2, client.reconnect_max_s)

    def _accept(self, frame: Frame) -> Frame | None:
        """Track `last_seq`; None for an event already yielded. A refused subscription raises,
        except that a database that is not answering is waited out."""
        kind = frame.get("type")
        if kind == "error":
            error = frame.get("error") or {}
            code, message = str(error.get("code")), str(error.get("message"))
            if code == "unavailable":
                raise _Retry
            raise _BY_FRAME_CODE.get(code, GpuqueueError)(code, message)
        if kind == "subscribed":
            self.last_seq = max(self.last_seq or 0, int(frame["seq"]))
        elif "seq" in frame:
            seq = int(frame["seq"])
            if self.last_seq is not None and seq <= self.last_seq:
                return None
            self.last_seq = seq
        return frame


class _Retry(Exception):
    """The server asked to be tried again later: reconnect and subscribe again."""
