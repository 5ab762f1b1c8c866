"""Estimated seconds until a queued job starts.

With W devices whose current jobs end after r_1 <= ... <= r_W seconds (0 when idle) and a mean
job duration D, each r_i <= D, so slots free up round-robin: the job with k jobs ahead of it
starts at r_(k mod W) + floor(k / W) * D. Gradio's rank_eta multiplies rank by a mean; this
also counts the work already done on the running jobs and the number of devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class EtaModel:
    mean_duration_s: float | None
    device_free_in_s: tuple[float, ...]

    @classmethod
    def from_context(cls, row: dict[str, Any]) -> EtaModel:
        """Build from the eta_context query's row."""
        mean = row["mean_duration_s"]
        devices = int(row["devices"] or 0)
        if mean is None or devices == 0:
            return cls(mean, ())
        running = sorted(max(0.0, mean - elapsed) for elapsed in row["running_elapsed_s"])
        running = running[:devices]
        free = [0.0] * (devices - len(running)) + running
        return cls(float(mean), tuple(sorted(free)))

    def eta_s(self, queue_position: int, not_before_s: float = 0.0) -> float | None:
        """Seconds until the job at this 1-based position starts; None when unknown.

        `not_before_s`: how long the job still waits out a retry's backoff (its run_after). It
        keeps its place, but no worker takes it before then, whatever the slots say.
        """
        if self.mean_duration_s is None or not self.device_free_in_s or queue_position < 1:
            return None
        ahead = queue_position - 1
        slots = len(self.device_free_in_s)
        start = self.device_free_in_s[ahead % slots] + (ahead // slots) * self.mean_duration_s
        return round(max(start, not_before_s), 1)


def backoff_left_s(run_after: str | datetime | None, now: datetime | None = None) -> float:
    """Seconds until `run_after` (a job's JSON field, ISO 8601), 0 when it has passed."""
    if run_after is None:
        return 0.0
    at = datetime.fromisoformat(run_after) if isinstance(run_after, str) else run_after
    return max(0.0, (at - (now or datetime.now(UTC))).total_seconds())
