"""GPUQUEUE_LOG_FORMAT=json (issue 15, item 5): one object per line, with the context fields of
the task that logged it and no other's. A real worker's lines: tests/integration/test_client.py."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from gpuqueue.logs import JsonFormatter, configure
from queueing import log_context


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines, through the context filter, into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(log_context.ContextFilter())
    logger = logging.getLogger("gpuqueue.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_each_task_logs_its_own_job(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """Two jobs logged at once by two tasks: each line names its own job, and both the GPU."""
    logger, out = captured
    token = log_context.bind(host="box", device="cuda:0", model="tiny")
    both = asyncio.Barrier(2)

    async def run(job: str) -> None:
        with log_context.bound(job_id=job):
            await both.wait()  # interleaved: both jobs are bound at the same time
            logger.info("job %s: complete", job)

    try:
        await asyncio.gather(run("a"), run("b"))
        logger.info("idle")
    finally:
        log_context.unbind(token)
    by_msg = {line["msg"]: line for line in lines(out)}
    assert by_msg["job a: complete"]["job_id"] == "a"
    assert by_msg["job b: complete"]["job_id"] == "b"
    assert "job_id" not in by_msg["idle"] and by_msg["idle"]["device"] == "cuda:0"
    assert log_context.current() == {}


def test_a_traceback_and_a_newline_stay_on_one_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("two\nlines")
    [line] = lines(out)
    assert line["msg"] == "two\nlines" and line["level"] == "ERROR"
    assert line["exc"].startswith("Traceback") and "ValueError: bad" in line["exc"]


def test_extra_fields_win_over_the_bound_ones(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    with log_context.bound(job_id="bound"):
        logger.info("swept", extra={"job_id": "given"})
    assert lines(out)[0]["job_id"] == "given"


def test_an_unknown_field_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="not a log context field: colour"):
        log_context.bind(colour="red")
    with pytest.raises(ValueError, match="must be text or json"):
        configure("INFO", "xml")
