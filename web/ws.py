"""GET /ws: the live feed of a conversation's (or some jobs') transitions, progress and positions.

Client -> server, JSON text frames:
    {"op": "subscribe", "conversation_id": ID, "since_seq"?: N}
    {"op": "subscribe", "job_ids": [ID, ...], "since_seq"?: N}
    {"op": "unsubscribe"}      {"op": "ping"}
Server -> client: transition events, "progress", "position", then {"type": "subscribed"} once a
subscription is caught up; {"type": "error", "error": {"code", "message"}} for a refused frame
(the socket stays usable). The token is checked again at every client frame, so a revoked one
is refused at once (close 4401), and every few seconds for all open sockets (web/token_watch.py),
so a quiet one is refused too. Frames over 64 KiB close the socket (1009).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import psycopg
from aiohttp import WSMsgType, web
from psycopg_pool import PoolTimeout

from queueing import conversations, jobs, tokens
from queueing.actors import Actor

from . import auth
from .errors import ApiError
from .keys import BROADCASTER, CLIENTS, POOL, TOKEN_WATCH, TOKENS
from .live import Broadcaster, Client, ClientGone
from .live.replay import FanoutBehind
from .live.wire import CLOSE_TRY_AGAIN, error_message, message
from .validation import parse_json

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024
MAX_JOB_IDS = 100
HEARTBEAT_S = 30.0
SUBSCRIBE_FIELDS = frozenset({"op", "conversation_id", "job_ids", "since_seq"})


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def websocket(request: web.Request) -> web.StreamResponse:
    token = auth.socket_token(request)
    actor = await auth.authenticate(request.app[TOKENS], token)  # 401 before the upgrade
    assert token is not None
    # No compression: each event's text is encoded once and the same bytes go to every socket.
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES, compress=False, writer_limit=16384
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "bad_request", "GET /ws speaks WebSocket only")
    transport = request.transport
    await ws.prepare(request)
    broadcaster = request.app[BROADCASTER]
    client = broadcaster.connect(ws, transport)
    request.app[CLIENTS].add(client)
    watch = request.app[TOKEN_WATCH]
    watch.add(client, token)
    session = _Session(request, broadcaster, client, actor, token)
    try:
        async for msg in ws:
            if client.closed:
                break
            if msg.type is WSMsgType.TEXT:
                await session.on_text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                client.offer(error_message("bad_frame", "send JSON text frames, not binary ones"))
            elif msg.type is WSMsgType.ERROR:
                break
    except ClientGone:
        pass
    finally:
        watch.discard(client)
        await broadcaster.disconnect(client)
    return ws


class _Session:
    """One socket's protocol state: who it is, and its frames in order."""

    def __init__(
        self,
        request: web.Request,
        broadcaster: Broadcaster,
        client: Client,
        actor: Actor,
        token: str,
    ) -> None:
        self._pool = request.app[POOL]
        self._broadcaster = broadcaster
        self._client = client
        self._actor = actor
        self._token = token

    async def on_text(self, data: str) -> None:
        client = self._client
        try:
            actor = await tokens.authenticate(self._pool, self._token)
            if actor is None:
                self._broadcaster.refuse_unauthorized(client)
                return
            self._actor = actor
            await self._handle(self._frame(data))
        except FrameError as exc:
            client.offer(error_message(exc.code, exc.message))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("WebSocket frame failed: database unavailable (%s)", exc)
            self._come_back_later("the database is not answering; reconnect")
        except FanoutBehind as exc:
            log.warning("WebSocket subscribe refused: %s", exc)
            self._come_back_later("this server is catching up with the queue; reconnect")
        except ClientGone:
            raise
        except Exception:
            log.exception("WebSocket frame failed")
            self._broadcaster.unsubscribe(client)
            client.offer(error_message("internal", "something went wrong on our side"))

    def _come_back_later(self, reason: str) -> None:
        """The frame could not be served now and the subscription is dropped: close with 1013,
        so the client reconnects and resubscribes with since_seq, missing nothing (the page does,
        quietly: an error frame on a socket left open would leave it unsubscribed)."""
        self._broadcaster.unsubscribe(self._client)
        self._client.close(CLOSE_TRY_AGAIN, reason)

    @staticmethod
    def _frame(data: str) -> dict[str, Any]:
        try:
            frame = parse_json(data)
        except ApiError as exc:
            raise FrameError("bad_frame", exc.message) from None
        if not isinstance(frame, dict):
            raise FrameError("bad_frame", 'a frame must be a JSON object with an "op"')
        return frame

    async def _handle(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "subscribe":
            await self._subscribe(frame)
        elif op == "unsubscribe":
            self._broadcaster.unsubscribe(self._client)
            self._client.offer(message("unsubscribed"))
        elif op == "ping":
            self._client.offer(message("pong"))
        else:
            raise FrameError(
                "unknown_op", f"unknown op {str(op)[:40]!r}: use subscribe, unsubscribe or ping"
            )

    async def _subscribe(self, frame: dict[str, Any]) -> None:
        unknown = sorted(set(frame) - SUBSCRIBE_FIELDS)
        if unknown:
            raise FrameError("unknown_fields", f"unknown field(s): {', '.join(unknown)}")
        since_seq = frame.get("since_seq")
        if since_seq is not None and (type(since_seq) is not int or since_seq < 0):
            raise FrameError("invalid", "since_seq must be an integer >= 0")
        has_conversation = frame.get("conversation_id") is not None
        has_jobs = frame.get("job_ids") is not None
        if has_conversation == has_jobs:
            raise FrameError("invalid", "subscribe to either a conversation_id or job_ids")
        if has_conversation:
            conversation_id = _uuid(frame["conversation_id"], "conversation")
            visible = await conversations.conversation_visible(
                self._pool, conversation_id, actor=self._actor
            )
            if not visible:
                raise FrameError("not_found", f"conversation {conversation_id} not found")
            await self._broadcaster.subscribe(
                self._client, conversation_id=conversation_id, since_seq=since_seq
            )
            return
        job_ids = frame["job_ids"]
        if not isinstance(job_ids, list) or not 1 <= len(job_ids) <= MAX_JOB_IDS:
            raise FrameError("invalid", f"job_ids must be a list of 1 to {MAX_JOB_IDS} job ids")
        wanted = {_uuid(j, "job") for j in job_ids}
        found = await jobs.visible_jobs(self._pool, wanted, actor=self._actor)
        missing = sorted(str(j) for j in wanted - set(found))
        if missing:
            raise FrameError("not_found", f"job(s) not found: {', '.join(missing)}")
        await self._broadcaster.subscribe(self._client, job_ids=wanted, since_seq=since_seq)


def _uuid(value: object, what: str) -> UUID:
    if not isinstance(value, str):
        raise FrameError("invalid", f"a {what} id must be a string")
    try:
        return UUID(value)
    except ValueError:
        raise FrameError("not_found", f"{what} {value[:80]!r} not found") from None
