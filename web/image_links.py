"""Signed image links (contract: Images).

An <img> cannot send the Authorization header, and a bearer token in a URL is shared and cached
with the link. So each image_url carries its expiry and an HMAC-SHA256 of the job id and that
expiry: `/api/jobs/{id}/image?exp=…&sig=…`. The secret is GPUQUEUE_IMAGE_SECRET or, without
one, a random secret stored once in the database, so every web server of it checks every link.
Links are signed where job JSON and events leave the server (`sign`), nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from typing import Any, cast
from uuid import UUID

from queueing.rows import EventJson, JobJson

from .errors import ApiError

SECRET_NAME = "image_links"
MIN_SECRET_BYTES = 32
_MAX_EXP_CHARS = 12
_MAX_SIG_CHARS = 64
_INVALID = "this image link is not valid: use the image_url of the job as the API gave it"
_EXPIRED = "this image link has expired: read the job again for a fresh image_url"


class ImageLinks:
    def __init__(self, secret: bytes, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the image link secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._ttl_s = ttl_s
        # Expiries are rounded up to a step (a minute by default), so a job's link stays the same
        # URL for that long and the browser's cache can serve it.
        self._step = max(1, min(60, ttl_s // 60))
        self._clock = clock

    def _sig(self, job_id: str, exp: int) -> str:
        mac = hmac.new(self._secret, f"{job_id}:{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def url(self, job_id: UUID | str) -> str:
        job = str(UUID(str(job_id)))
        exp = math.ceil((self._clock() + self._ttl_s) / self._step) * self._step
        return f"/api/jobs/{job}/image?exp={exp}&sig={self._sig(job, exp)}"

    def sign(self, value: JobJson | EventJson) -> dict[str, Any]:
        """The job or event as it leaves the server: queueing's has_image becomes image_url, a
        signed link (null without an image). A job always has has_image, an event only with one."""
        if "has_image" not in value:
            return cast("dict[str, Any]", value)
        shown: dict[str, Any] = {key: v for key, v in value.items() if key != "has_image"}
        shown["image_url"] = self.url(value["job_id"]) if value["has_image"] else None
        return shown

    def check(self, job_id: UUID, exp: str | None, sig: str | None) -> float:
        """Seconds the link has left; 403 when it is forged, altered or expired."""
        if exp is None or sig is None or not _well_formed(exp, sig):
            raise ApiError(403, "invalid_link", _INVALID)
        if not hmac.compare_digest(self._sig(str(job_id), int(exp)), sig):
            raise ApiError(403, "invalid_link", _INVALID)
        left = int(exp) - self._clock()
        if left <= 0:
            raise ApiError(403, "link_expired", _EXPIRED)
        return left


def _well_formed(exp: str, sig: str) -> bool:
    return (
        exp.isascii()
        and exp.isdigit()
        and len(exp) <= _MAX_EXP_CHARS
        and sig.isascii()
        and len(sig) <= _MAX_SIG_CHARS
    )
