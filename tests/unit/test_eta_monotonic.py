"""An ETA never falls as the position rises (issue 12, item 6): for any queue of jobs of any
sizes, any cost fit and any free times of the model's GPUs, the job at position p + 1 gets an
eta_s no earlier than the job at position p."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from queueing.cost_model import CostFit
from queueing.eta import ModelEta, Share

fits = st.builds(
    CostFit,
    st.floats(0.0, 5.0),
    st.floats(0.01, 50.0),
    st.just(10),
)
works = st.lists(st.floats(0.0, 10.0), min_size=1, max_size=30)


def etas(eta: ModelEta, sizes: list[float]) -> list[float | None]:
    """eta_s of each position of a queue whose jobs have these works, as the API computes it
    from (position, work ahead)."""
    ahead = [0.0, *itertools.accumulate(sizes)]
    return [eta.eta_s(p + 1, ahead[p]) for p in range(len(sizes))]


@given(fits, st.floats(0.0, 100.0), works)
def test_eta_rises_with_position_on_one_gpu(
    fit: CostFit, free_in: float, sizes: list[float]
) -> None:
    values = etas(ModelEta(fit, (free_in,)), sizes)
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(values))


@given(fits, st.lists(st.floats(0.0, 100.0), min_size=2, max_size=4), works)
def test_eta_rises_with_position_on_several_gpus(
    fit: CostFit, free_in: list[float], sizes: list[float]
) -> None:
    values = etas(ModelEta(fit, tuple(sorted(free_in))), sizes)
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(values))


backlogs = st.lists(st.tuples(st.floats(0.0, 100.0), st.floats(0.1, 5.0)), max_size=6)
tag_steps = st.lists(st.floats(0.0, 10.0), min_size=1, max_size=30)


@given(fits, st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4), backlogs, tag_steps)
def test_eta_rises_with_position_with_the_fair_share_term(
    fit: CostFit, free_in: list[float], backlog: list[tuple[float, float]], steps: list[float]
) -> None:
    """Within a priority the queue is in start-tag order: any users served now (their latest
    finish tags and weights), any tags rising along the queue, any sizes."""
    eta = ModelEta(fit, tuple(sorted(free_in)), Share(tuple(backlog)))
    tags = list(itertools.accumulate(steps))
    ahead = [0.0, *itertools.accumulate(steps)]  # each job's work: its tag step, any will do
    values = [eta.eta_s(p + 1, ahead[p], start_tag=tag) for p, tag in enumerate(tags)]
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(values))
