"""Request validation at the edge: a refused request writes nothing and says what was wrong.

Types are strict (JSON true is not an integer, "5" is not a number); an optional field given as
null takes its default; unknown fields are refused by name, so a typo never passes silently.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from typing import Any, NoReturn
from uuid import UUID

from aiohttp import web

from queueing import limits
from queueing.actors import Actor
from queueing.config import Settings
from queueing.jobs import JobRequest
from queueing.models import ModelCapabilities

from .errors import ApiError, bad_request, invalid, not_found
from .image_links import MIN_SECRET_BYTES

MAX_BODY_BYTES = 64 * 1024
MAX_TITLE_CHARS = 200
IMAGE_LINK_TTL_S = (1, 7 * 86400)
RESERVED_METADATA_KEYS = ("job_id", "status", "queue_position", "error")

IMAGE_FIELDS = (
    "prompt",
    "model",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "seed",
    "priority",
    "max_attempts",
    "timeout_s",
)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON: NaN and Infinity are refused; so are nesting too deep and invalid UTF-8."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}", "invalid_json") from None


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object (413 beyond 64 KiB, 400 when not JSON or not an object)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", "the request body is too large (64 KiB at most)")
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise bad_request("the request body must be a JSON object")
    value = parse_json(raw)
    if not isinstance(value, dict):
        raise bad_request("the request body must be a JSON object")
    return value


def parse_uuid(value: str, what: str) -> UUID:
    """A path id; anything that is not a UUID names nothing, so it is a 404 like any other."""
    try:
        return UUID(value)
    except ValueError:
        raise not_found(f"{what} {value[:80]!r} not found") from None


def refuse_unknown(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise invalid(
            f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(allowed)}",
            "unknown_fields",
        )


def check_text(value: str, name: str) -> str:
    """No NUL (PostgreSQL text cannot hold it) and no lone surrogate (not UTF-8)."""
    if "\x00" in value:
        raise invalid(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"{name} is not valid Unicode text") from None
    return value


def _string(
    body: Mapping[str, Any], name: str, *, max_chars: int, required: bool = False
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise invalid(f"{name} must be a string")
    if len(value) > max_chars:
        raise invalid(f"{name} must be at most {max_chars} characters (got {len(value)})")
    return check_text(value, name)


def _integer(body: Mapping[str, Any], name: str, low: int, high: int, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int:  # bool is an int subclass: true is not 1 here
        raise invalid(f"{name} must be an integer")
    if not low <= value <= high:
        raise invalid(f"{name} must be between {low} and {high} (got {value})")
    return value


def _number(body: Mapping[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if type(value) not in (int, float) or not math.isfinite(value):
        raise invalid(f"{name} must be a number")
    if not low <= value <= high:
        raise invalid(f"{name} must be between {low:g} and {high:g} (got {value})")
    return float(value)


def _side(
    body: Mapping[str, Any],
    name: str,
    default: int,
    model: str = "",
    described: ModelCapabilities | None = None,
) -> int:
    value = _integer(body, name, *limits.SIDE, default)
    if value % limits.SIDE_MULTIPLE:
        raise invalid(f"{name} must be a multiple of {limits.SIDE_MULTIPLE} (got {value})")
    multiple = _size_multiple(described)
    if value % multiple:
        raise invalid(
            f"{name} must be a multiple of {multiple} for model {model!r}, the sizes"
            f" it makes (got {value})",
            "unsupported_size",
        )
    return value


def _model_default_size(described: ModelCapabilities | None, fallback: int) -> int:
    """The model's own default size where it has one the queue accepts, else `fallback`."""
    size = described.default_size if described else None
    if size is None or not _within(size, limits.SIDE) or size % _size_multiple(described):
        return fallback
    return size


def _size_multiple(described: ModelCapabilities | None) -> int:
    """What the model's sides must be multiples of: its own rule, or the queue's."""
    own = described.size_multiple if described else 1
    return own * limits.SIDE_MULTIPLE // math.gcd(own, limits.SIDE_MULTIPLE)


def _within(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def check_settings(settings: Settings) -> None:
    """Defaults the edge would refuse in a request are refused here, at start-up."""
    size, (low, high) = settings.default_size, limits.SIDE
    if not (_within(size, limits.SIDE) and size % limits.SIDE_MULTIPLE == 0):
        raise ValueError(
            f"GPUQUEUE_DEFAULT_SIZE must be a multiple of {limits.SIDE_MULTIPLE} in "
            f"{low}..{high}, not {size}"
        )
    for name, value, bounds in (
        ("GPUQUEUE_DEFAULT_TIMEOUT_S", settings.default_timeout_s, limits.TIMEOUT_S),
        ("GPUQUEUE_DEFAULT_MAX_ATTEMPTS", settings.default_max_attempts, limits.MAX_ATTEMPTS),
    ):
        if not _within(value, bounds):
            raise ValueError(f"{name} must be in {bounds[0]}..{bounds[1]}")
    if settings.max_queued_per_user < 1:
        raise ValueError("GPUQUEUE_MAX_QUEUED_PER_USER must be at least 1")
    if not _within(settings.image_link_ttl_s, IMAGE_LINK_TTL_S):
        raise ValueError("GPUQUEUE_IMAGE_LINK_TTL_S must be in 1..604800 (a week)")
    secret = settings.image_secret
    if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"GPUQUEUE_IMAGE_SECRET must be at least {MIN_SECRET_BYTES} bytes long")


def image_request(
    body: Mapping[str, Any],
    *,
    actor: Actor,
    settings: Settings,
    models: Mapping[str, ModelCapabilities] | None = None,
) -> JobRequest:
    """POST /api/conversations/{id}/images, checked field by field.

    The seed is chosen here when none is given, so every job is reproducible and the page can
    show it. Users may lower their priority; raising it is for admins. `models`
    (model_capabilities) holds what workers reported of each model: its size rule, and its
    defaults for steps, guidance and size, which fill what the request leaves out and so show
    in the job's params.
    """
    refuse_unknown(body, IMAGE_FIELDS)
    prompt = _string(body, "prompt", max_chars=limits.PROMPT_CHARS, required=True)
    assert prompt is not None
    if not prompt.strip():
        raise invalid("prompt must not be empty")
    negative = _string(body, "negative_prompt", max_chars=limits.PROMPT_CHARS)
    model = _string(body, "model", max_chars=limits.MODEL_NAME_CHARS) or settings.default_model
    described = (models or {}).get(model)
    default_size = _model_default_size(described, settings.default_size)
    steps = (described.default_steps if described else None) or limits.DEFAULT_STEPS
    guidance = described.default_guidance if described else None
    params: dict[str, Any] = {
        "negative_prompt": negative,
        "width": _side(body, "width", default_size, model, described),
        "height": _side(body, "height", default_size, model, described),
        "steps": _integer(body, "steps", *limits.STEPS, steps),
        "guidance_scale": _number(
            body,
            "guidance_scale",
            *limits.GUIDANCE_SCALE,
            limits.DEFAULT_GUIDANCE_SCALE if guidance is None else guidance,
        ),
        "seed": _integer(body, "seed", 0, limits.SEED_MAX, secrets.randbelow(limits.SEED_MAX + 1)),
    }
    priority = _integer(body, "priority", *limits.PRIORITY, 0)
    if priority > 0 and not actor.is_admin:
        raise ApiError(403, "forbidden", "only an admin may raise a job's priority above 0")
    return JobRequest(
        prompt=prompt,
        params=params,
        model=model,
        priority=priority,
        max_attempts=_integer(
            body, "max_attempts", *limits.MAX_ATTEMPTS, settings.default_max_attempts
        ),
        timeout_s=_integer(body, "timeout_s", *limits.TIMEOUT_S, settings.default_timeout_s),
    )


def move_request(body: Mapping[str, Any]) -> None:
    """POST /api/jobs/{id}/move: {"to": "front"}, the one move there is."""
    refuse_unknown(body, ("to",))
    if body.get("to") != "front":
        raise invalid('to must be "front" (the one place a job can move to)')


def conversation_title(body: Mapping[str, Any], *, required: bool = False) -> str:
    """POST /api/conversations {"title"?} (none, or only spaces: the first prompt's is taken)
    and PATCH /api/conversations/{id} {"title"} (required, not blank); stored trimmed."""
    refuse_unknown(body, ("title",))
    title = (_string(body, "title", max_chars=MAX_TITLE_CHARS, required=required) or "").strip()
    if required and not title:
        raise invalid("title must not be empty")
    return title


def metadata_patch(body: dict[str, Any]) -> dict[str, Any]:
    """PATCH /api/messages/{id}/metadata: any JSON object, except the keys the queue keeps in
    step with the job (they would be overwritten at its next transition)."""
    reserved = sorted(k for k in body if k in RESERVED_METADATA_KEYS)
    if reserved:
        raise invalid(
            f"{', '.join(reserved)} belong(s) to the queue and cannot be set; "
            f"reserved: {', '.join(RESERVED_METADATA_KEYS)}",
            "reserved_fields",
        )
    keys = _check_json(body, "metadata", 1)
    if keys > limits.METADATA_KEYS:
        raise invalid(
            f"a metadata patch may hold at most {limits.METADATA_KEYS} keys, counted at every "
            f"depth (got {keys}); send it in several patches",
            "metadata_too_many_keys",
        )
    return body


def _check_json(value: Any, path: str, level: int) -> int:
    """Every string (keys too) storable in jsonb, and containers nested at most
    limits.METADATA_DEPTH levels; returns the number of object keys at every depth."""
    if isinstance(value, dict | list) and level > limits.METADATA_DEPTH:
        raise invalid(
            f"metadata is nested more than {limits.METADATA_DEPTH} levels deep at {path[:200]}",
            "metadata_too_deep",
        )
    if isinstance(value, str):
        check_text(value, path)
    elif isinstance(value, dict):
        keys = len(value)
        for key, item in value.items():
            check_text(key, f"a key in {path}")
            keys += _check_json(item, f"{path}.{key}", level + 1)
        return keys
    elif isinstance(value, list):
        return sum(
            _check_json(item, f"{path}[{index}]", level + 1) for index, item in enumerate(value)
        )
    return 0
