"""The frames the server sends on /ws, built in one place so their shapes are read in one place.

A transition event's text is built once (`event_of`) and the same str goes to every socket that
follows it; position texts are built once per job and pass. Only transition events carry a
per-event `seq`; `subscribed` carries the seq up to which the subscription has been sent.
"""

from __future__ import annotations

import base64
from typing import Any, TypeAlias
from uuid import UUID

from queueing.rows import EventRow

from ..image_links import ImageLinks
from ..json_text import dumps

CLOSE_TRY_AGAIN = 1013  # RFC 6455's "try again later": clients reconnect and resubscribe
CLOSE_TOO_SLOW = 4008
CLOSE_UNAUTHORIZED = 4401

# seq, job_id, status, queue_position, the event's JSON text
Event: TypeAlias = tuple[int, UUID, str, int, str]


def event_of(row: EventRow, links: ImageLinks) -> Event:
    """An events_after row as routed and sent: its image link signed, its JSON serialised once."""
    event = links.sign(row["event"])
    return (row["seq"], row["job_id"], event["status"], event["queue_position"], dumps(event))


def eta_bucket(eta_s: float | None) -> int | None:
    """ETAs are re-sent only when they move by a noticeable step, not at every tenth of a second."""
    if eta_s is None:
        return None
    step = 1 if eta_s < 10 else 5 if eta_s < 120 else 30 if eta_s < 1200 else 300
    return int(eta_s // step) * step


def position_message(job_id: UUID, queue_position: int, eta_s: float | None) -> str:
    message = {"type": "position", "job_id": str(job_id), "queue_position": queue_position}
    return dumps({**message, "eta_s": eta_s})


def progress_message(job_id: UUID, progress: dict[str, Any]) -> str:
    step, steps = progress.get("step"), progress.get("steps")
    return dumps({"type": "progress", "job_id": str(job_id), "step": step, "steps": steps})


def preview_message(job_id: UUID, image: bytes) -> str:
    """A running job's latest preview (issue 16), a small PNG or JPEG as a data URL the page
    draws as it is (its CSP allows data: images)."""
    kind = "png" if image.startswith(b"\x89PNG") else "jpeg"
    url = f"data:image/{kind};base64,{base64.b64encode(image).decode('ascii')}"
    return dumps({"type": "preview", "job_id": str(job_id), "image": url})


def subscribed_message(follows: dict[str, Any], seq: int) -> str:
    return dumps({"type": "subscribed", **follows, "seq": seq})


def error_message(code: str, message: str) -> str:
    return dumps({"type": "error", "error": {"code": code, "message": message}})


def message(kind: str) -> str:
    """A frame with nothing but its type: pong, unsubscribed."""
    return dumps({"type": kind})
