"""The job's states: the one Python definition (SQL: the job_status domain; JS: jobStatus.js).

tests/integration/test_job_status.py holds the three lists equal, in the same order.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is, in lifecycle order. A StrEnum, so a member equals its text as rows and
    JSON carry it."""

    # Inserted, not yet queued: the job is moved to queued in the same transaction, so no other
    # transaction sees it pending; its event is stored but never sent (R5.1).
    PENDING = "pending"
    # Waiting for a GPU; queue_position >= 1 is its live rank in claim order.
    QUEUED = "queued"
    # A worker holds the GPU lock of its (host, device) and runs it.
    PROCESSING = "processing"
    # Finished with its image, stored in the same transaction.
    COMPLETE = "complete"
    # Failed for good; the job's error says why.
    ERROR = "error"
    # Canceled by its user, while queued or processing.
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        """complete, error and canceled: a job in one of them never changes again."""
        return self in FINAL


FINAL = frozenset({JobStatus.COMPLETE, JobStatus.ERROR, JobStatus.CANCELED})
