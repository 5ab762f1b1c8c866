"""What a log line is about (its job, worker and GPU), set where it is known and read by the log
handler, so that a worker's lines carry their job and GPU without every call passing them.

A context variable: each asyncio task sees the values bound where it was created (a worker binds
its GPU once, its worker id at registration and a job's id while it runs that job), and two
tasks never see each other's job. gpuqueue/logs.py installs `ContextFilter` on its handler.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType

# The fields a line may carry, in the order a JSON line shows them.
FIELDS = ("job_id", "worker_id", "host", "device", "model")

_bound: ContextVar[Mapping[str, str]] = ContextVar(
    "gpuqueue_log_context", default=MappingProxyType({})
)


def bind(**fields: object) -> Token[Mapping[str, str]]:
    """Add `fields` (names from FIELDS) to the current context; None removes one. The token
    restores the context as it was (`unbind`)."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"not a log context field: {', '.join(sorted(unknown))}")
    merged = {**_bound.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    for name in (k for k, v in fields.items() if v is None):
        merged.pop(name, None)
    return _bound.set(merged)


def unbind(token: Token[Mapping[str, str]]) -> None:
    """Restore the context `bind` replaced."""
    _bound.reset(token)


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """`fields` bound for the lines logged inside the block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current() -> Mapping[str, str]:
    return _bound.get()


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record that does not carry them yet (`extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _bound.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True
