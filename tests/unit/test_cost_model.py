"""The cost model (queueing/cost_model.py): least squares of run time over work where the sizes
varied and the line is sane, run time proportional to work otherwise, a prior before any job
finished, and fits of several hosts pooled by their samples."""

from __future__ import annotations

import pytest

from queueing.cost_model import MIN_RUN_S, PRIOR, CostFit, pooled
from queueing.eta import EtaModel
from queueing.rows import CostSampleRow, EtaGpuRow


def row(
    *,
    samples: int = 10,
    mean_run_s: float = 6.0,
    mean_work: float = 2.0,
    slope: float | None = 2.5,
    intercept: float | None = 1.0,
    var_work: float | None = 1.0,
    model: str = "m",
    host: str = "h",
) -> CostSampleRow:
    return {
        "model": model,
        "host": host,
        "samples": samples,
        "mean_run_s": mean_run_s,
        "mean_work": mean_work,
        "slope": slope,
        "intercept": intercept,
        "var_work": var_work,
    }


PROPORTIONAL = 3.0  # mean_run_s / mean_work of row()'s defaults


def test_the_least_squares_line_is_used_where_sizes_varied() -> None:
    assert CostFit.from_row(row()) == CostFit(1.0, 2.5, 10)
    assert CostFit.from_row(row(intercept=0.0)) == CostFit(0.0, 2.5, 10)  # through the origin


@pytest.mark.parametrize(
    ("why", "fields"),
    [
        ("fewer than three samples", {"samples": 2}),
        ("every job of one size", {"var_work": 0.0}),
        ("no variance known", {"var_work": None}),
        ("sizes within 5 % of each other", {"var_work": (0.05 * 2.0) ** 2}),
        ("no line (regr_slope NULL)", {"slope": None}),
        ("no intercept", {"intercept": None}),
        ("bigger jobs ran faster", {"slope": -0.5}),
        ("a negative fixed part", {"intercept": -0.2}),
        ("a flat line", {"slope": 0.0}),
    ],
)
def test_run_time_is_proportional_to_work_where_the_line_is_not_trusted(
    why: str, fields: dict[str, float | None]
) -> None:
    fit = CostFit.from_row(row(**fields))  # type: ignore[arg-type]
    samples = int(fields.get("samples") or 10)
    assert fit == CostFit(0.0, PROPORTIONAL, samples), why
    assert fit.run_s(2.0) == pytest.approx(6.0)  # the mean job still costs the mean run time


def test_sizes_just_beyond_five_percent_are_fitted() -> None:
    assert CostFit.from_row(row(var_work=(0.051 * 2.0) ** 2)) == CostFit(1.0, 2.5, 10)


def test_jobs_of_no_known_size_cost_their_mean_run_time() -> None:
    fit = CostFit.from_row(row(mean_work=0.0, var_work=0.0, slope=None, intercept=None))
    assert fit == CostFit(6.0, 0.0, 10)
    assert fit.run_s(0.0) == fit.run_s(50.0) == 6.0


def test_a_run_time_is_never_zero_or_negative() -> None:
    assert CostFit(0.0, 0.0, 1).run_s(1.0) == MIN_RUN_S
    assert CostFit(0.0, 1.0, 1).run_s(-5.0) == MIN_RUN_S


def test_the_prior_costs_bigger_jobs_more() -> None:
    """Before any job finished, fair-share tags still need a cost that grows with size."""
    assert PRIOR.samples == 0
    small, big = PRIOR.run_s(64 * 64 * 4 / 1e6), PRIOR.run_s(1024 * 1024 * 30 / 1e6)
    assert 0 < small < big
    assert PRIOR.run_s(512 * 512 * 30 / 1e6) == pytest.approx(1.29, abs=0.01)


def test_fits_of_several_hosts_are_pooled_by_their_samples() -> None:
    pooled_fit = pooled([CostFit(1.0, 2.0, 30), CostFit(3.0, 6.0, 10)])
    assert pooled_fit == CostFit(1.5, 3.0, 40)
    assert pooled([]) is None
    assert pooled([CostFit(1.0, 1.0, 0)]) is None


def test_a_new_jobs_cost_is_its_models_fits_else_the_prior() -> None:
    model = EtaModel.from_rows(
        [
            row(model="m", host="a", samples=10, slope=2.0, intercept=1.0),
            row(model="m", host="b", samples=30, slope=4.0, intercept=1.0),
            row(model="other", host="a", slope=100.0),
        ],
        [],
    )
    assert model.cost("m") == CostFit(1.0, 3.5, 40)
    assert model.cost("never-ran") == PRIOR
    assert EtaModel().cost("m") == PRIOR


def test_the_eta_uses_the_live_hosts_fits_before_gone_ones() -> None:
    """A model's ETA is costed with the fits of the hosts that serve it now; another host's
    history counts only when no live host has any."""
    gpu: EtaGpuRow = {"model": "m", "host": "live", "device": "d", "work": None, "elapsed_s": None}
    samples = [
        row(model="m", host="live", slope=1.0, intercept=0.0),
        row(model="m", host="gone", slope=9.0, intercept=0.0),
    ]
    assert EtaModel.from_rows(samples, [gpu]).models["m"].fit == CostFit(0.0, 1.0, 10)
    only_gone = EtaModel.from_rows(samples[1:], [gpu])
    assert only_gone.models["m"].fit == CostFit(0.0, 9.0, 10)
