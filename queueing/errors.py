"""Errors the queue raises for a caller to show; each carries an HTTP-ish status and a code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg


class QueueError(Exception):
    """A refused request: nothing was written."""

    status = 400
    code = "bad_request"


class NotFound(QueueError):
    status = 404
    code = "not_found"


class IllegalTransition(QueueError):
    status = 409
    code = "conflict"


class QueueFull(QueueError):
    status = 429
    code = "queue_full"


class InvalidData(QueueError):
    status = 422
    code = "invalid"


class UnknownModel(QueueError):
    """A request named a model no worker has registered (the message lists the known ones)."""

    status = 422
    code = "unknown_model"


class TooLarge(QueueError):
    """The result would be over a size limit (a message's metadata)."""

    status = 413
    code = "metadata_too_large"


_BY_SQLSTATE: dict[str, type[QueueError]] = {
    "GQ404": NotFound,
    "GQ409": IllegalTransition,
    "GQ413": TooLarge,
    "GQ422": UnknownModel,
    "GQ429": QueueFull,
    "23503": NotFound,  # foreign_key_violation: what it refers to was deleted meanwhile
    "23514": InvalidData,  # check_violation
    "22P02": InvalidData,  # invalid_text_representation
    "22001": InvalidData,  # string_data_right_truncation
    "22003": InvalidData,  # numeric_value_out_of_range
    "54000": InvalidData,  # program_limit_exceeded (e.g. jsonb too deep)
}


def refusal(sqlstate: str, message: str) -> QueueError | None:
    """The QueueError for a database refusal of this SQLSTATE, None when it is not one."""
    kind = _BY_SQLSTATE.get(sqlstate)
    return None if kind is None else kind(message)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn the database's refusals (our GQ codes, CHECK violations) into QueueErrors."""
    try:
        yield
    except psycopg.Error as exc:
        refused = refusal(exc.sqlstate or "", exc.diag.message_primary or str(exc))
        if refused is None:
            raise
        raise refused from exc
