"""A job waiting out a retry's backoff starts no earlier than its run_after (issue 10, item 13)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from queueing.cost_model import CostFit
from queueing.eta import UNKNOWN, ModelEta, backoff_left_s


def test_the_eta_is_never_earlier_than_the_backoff() -> None:
    model = ModelEta(CostFit(10.0, 0.0, 1), (0.0,))
    assert model.eta_s(1, 0.0) == 0.0
    assert model.eta_s(1, 0.0, not_before_s=42.04) == 42.0
    assert model.eta_s(3, 2.0, not_before_s=5.0) == 20.0  # the slots say later: they win
    assert UNKNOWN.eta_s(1, 0.0, not_before_s=5.0) is None


def test_backoff_left_reads_the_jobs_run_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert backoff_left_s((now + timedelta(seconds=30)).isoformat(), now) == 30.0
    assert backoff_left_s("2026-01-01T11:59:00+00:00", now) == 0.0
    assert backoff_left_s(now + timedelta(seconds=1.5), now) == 1.5
    assert backoff_left_s(None, now) == 0.0
