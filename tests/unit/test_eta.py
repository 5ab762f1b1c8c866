"""The ETA model: per model, round-robin over its GPUs' free times, the jobs ahead costed by
the cost model at their mean work; null without a fit or without a live GPU."""

from __future__ import annotations

from queueing.cost_model import CostFit
from queueing.eta import EtaModel, ModelEta, Share
from queueing.rows import CostSampleRow, EtaGpuRow

FIT = CostFit(0.0, 1.0, 10)  # one second per megapixel-step


def gpu(model: str, device: str, work: float | None = None, elapsed: float = 0.0) -> EtaGpuRow:
    return {"model": model, "host": "h", "device": device, "work": work, "elapsed_s": elapsed}


def samples(model: str, mean_run_s: float, mean_work: float) -> CostSampleRow:
    return {
        "model": model,
        "host": "h",
        "samples": 5,
        "mean_run_s": mean_run_s,
        "mean_work": mean_work,
        "slope": None,
        "intercept": None,
        "var_work": 0.0,
    }


def test_eta_is_unknown_without_history() -> None:
    model = EtaModel.from_rows([], [gpu("a", "cuda:0")])
    assert model.eta_s("a", 1, 0.0) is None


def test_eta_is_unknown_without_live_workers_of_the_model() -> None:
    model = EtaModel.from_rows([samples("a", 10.0, 10.0)], [gpu("b", "cuda:0")])
    assert model.eta_s("a", 3, 20.0) is None


def test_eta_counts_the_running_jobs_remaining_time() -> None:
    model = EtaModel.from_rows([samples("a", 10.0, 10.0)], [gpu("a", "cuda:0", 10.0, 4.0)])
    assert model.eta_s("a", 1, 0.0) == 6.0
    assert model.eta_s("a", 2, 10.0) == 16.0
    assert model.eta_s("a", 3, 20.0) == 26.0


def test_the_jobs_ahead_are_costed_by_their_work() -> None:
    eta = ModelEta(FIT, (0.0,))
    assert eta.eta_s(3, 2.0) == 2.0  # two small jobs ahead
    assert eta.eta_s(3, 40.0) == 40.0  # two big ones


def test_eta_spreads_the_queue_over_gpus() -> None:
    eta = ModelEta(CostFit(10.0, 0.0, 1), (0.0, 2.0))  # one idle GPU, one free in 2 s
    # 2nd: the second GPU frees first; then the work ahead spread over both (exact: 10, 12).
    assert [eta.eta_s(p, 0.0) for p in (1, 2, 3, 4)] == [0.0, 2.0, 11.0, 16.0]


def test_a_small_job_ahead_on_an_idle_gpu_is_waited_for_not_the_busy_one() -> None:
    eta = ModelEta(CostFit(0.0, 1.0, 1), (0.0, 14.1))
    assert [eta.eta_s(p, 0.3 * (p - 1)) for p in (1, 2, 3)] == [0.0, 0.3, 0.6]


def test_eta_of_an_overrunning_job_is_not_negative() -> None:
    model = EtaModel.from_rows([samples("a", 5.0, 5.0)], [gpu("a", "cuda:0", 5.0, 9.0)])
    assert model.eta_s("a", 1, 0.0) == 0.0


def test_two_workers_on_one_gpu_count_it_once() -> None:
    model = EtaModel.from_rows(
        [samples("a", 10.0, 10.0)], [gpu("a", "cuda:0"), gpu("a", "cuda:0", 10.0, 2.0)]
    )
    assert model.models["a"].free_in_s == (8.0,)


def test_the_fair_share_clock_counts_the_jobs_that_will_come_first() -> None:
    """A job of tag 14 starts after the work queued ahead of it and, from each other user served
    now whose jobs end before tag 14, that user's share of the tags up to it: a user of weight 1
    whose jobs end at tag 11 will queue 3 GPU-seconds ahead of it, one of weight 2 ending at 12
    another 4; a user whose queued jobs reach past 14 (its own user, too) has all of its jobs
    that go first queued already."""
    eta = ModelEta(FIT, (0.0,), Share(((11.0, 1.0), (12.0, 2.0), (20.0, 1.0), (16.0, 1.0))))
    assert eta.eta_s(2, 1.0, start_tag=14.0) == 8.0
    assert eta.eta_s(2, 1.0, start_tag=10.0) == 1.0  # every other user's backlog reaches past it
    assert eta.eta_s(2, 1.0) == 1.0  # no tag: the work ahead alone


def test_the_fair_share_backlogs_come_from_the_eta_shares_rows() -> None:
    model = EtaModel.from_rows(
        [samples("a", 1.0, 1.0)],
        [gpu("a", "cuda:0")],
        [{"model": "a", "finish_tags": [11.0, 12.0], "weights": [1.0, 2.0]}],
    )
    assert model.models["a"].share == Share(((11.0, 1.0), (12.0, 2.0)))
    assert model.eta_s("a", 2, 1.0, start_tag=14.0) == 8.0
