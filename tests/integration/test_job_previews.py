"""Issue 16 item 9, the database side: a progress report may carry a preview, stored fenced by
the claim like the step; the fan-out's read returns it only with the step it was made at (so
it is sent once), and a job's preview goes once the job has ended and another one is stored."""

from __future__ import annotations

from queueing import db, events, jobs
from queueing.actors import Actor
from tests import queries
from tests.integration.web_support import HandWorker

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"0" * 16
REQUEST = jobs.JobRequest(prompt="a heron", params={"steps": 4, "seed": 1})


async def preview_rows(pool: db.Pool) -> int:
    return int(await queries.fetch_value(pool, "job_previews_count"))


async def test_a_preview_is_read_with_its_step_only_and_fenced_by_the_claim(
    pool: db.Pool, worker: HandWorker, alice: Actor, conversation_id: str
) -> None:
    job = await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    claim = await worker.claim()
    assert await jobs.report_progress(pool, claim, 1, 4, PNG) is False
    (row,) = await events.progress_of(pool, [claim.job_id])
    assert row["progress"] == {"step": 1, "steps": 4} and row["preview"] == PNG
    assert await jobs.report_progress(pool, claim, 2, 4) is False  # no preview this step
    (row,) = await events.progress_of(pool, [claim.job_id])
    assert row["progress"]["step"] == 2 and row["preview"] is None  # PNG was sent already
    assert await jobs.report_progress(pool, claim, 3, 4, JPEG) is False
    (row,) = await events.progress_of(pool, [claim.job_id])
    assert row["preview"] == JPEG and await preview_rows(pool) == 1  # the latest only

    assert await jobs.complete(worker.conn, claim, PNG, release_device=claim.gpu_lock)
    assert await jobs.report_progress(pool, claim, 4, 4, PNG) is None  # stale: nothing stored
    assert await events.progress_of(pool, [claim.job_id]) == []

    # The next job's preview removes the ended job's.
    await jobs.enqueue(pool, conversation_id, REQUEST, actor=alice, max_queued=100)
    second = await worker.claim()
    assert second.job_id != job["job_id"]
    assert await jobs.report_progress(pool, second, 1, 4, PNG) is False
    assert await preview_rows(pool) == 1
    (row,) = await events.progress_of(pool, [second.job_id])
    assert row["preview"] == PNG
