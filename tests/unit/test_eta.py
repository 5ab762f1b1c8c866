"""The ETA model: round-robin over device free times, null without history."""

from queueing.eta import EtaModel


def test_eta_is_unknown_without_history() -> None:
    model = EtaModel.from_context({"mean_duration_s": None, "devices": 1, "running_elapsed_s": []})
    assert model.eta_s(1) is None


def test_eta_is_unknown_without_live_workers() -> None:
    model = EtaModel.from_context({"mean_duration_s": 10.0, "devices": 0, "running_elapsed_s": []})
    assert model.eta_s(3) is None


def test_eta_counts_the_running_jobs_remaining_time() -> None:
    model = EtaModel.from_context(
        {"mean_duration_s": 10.0, "devices": 1, "running_elapsed_s": [4.0]}
    )
    assert model.eta_s(1) == 6.0
    assert model.eta_s(2) == 16.0
    assert model.eta_s(3) == 26.0


def test_eta_spreads_the_queue_over_devices() -> None:
    model = EtaModel.from_context(
        {"mean_duration_s": 10.0, "devices": 2, "running_elapsed_s": [8.0]}
    )
    # One idle device (free now), one free in 2 s.
    assert [model.eta_s(p) for p in (1, 2, 3, 4)] == [0.0, 2.0, 10.0, 12.0]


def test_eta_of_an_overrunning_job_is_not_negative() -> None:
    model = EtaModel.from_context(
        {"mean_duration_s": 5.0, "devices": 1, "running_elapsed_s": [9.0]}
    )
    assert model.eta_s(1) == 0.0
