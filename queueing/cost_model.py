"""Expected GPU-seconds of a job from its size, learned per model and host.

A job's work is steps x width x height in megapixel-steps (gq_job_work, migration 007). Its run
time on one GPU is close to a line in that work: a fixed part (text encoder, VAE, hand-off) and a
part per step and pixel. The line is fitted by least squares on the GPU host's latest complete
jobs of the model (the cost_samples query aggregates them); where every sample had the same
size, or the fit came out negative, run time is taken as proportional to work. Before any job of a
model finished, PRIOR stands in: fair-share tags need a cost from the first job on, and a
proportional guess keeps big jobs costlier than small ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .rows import CostSampleRow

SAMPLES = 50  # complete jobs per (model, host) the fit reads
MIN_RUN_S = 0.001


@dataclass(frozen=True)
class CostFit:
    """run time = intercept_s + slope_s * work, from `samples` finished jobs."""

    intercept_s: float
    slope_s: float  # seconds per megapixel-step
    samples: int

    def run_s(self, work: float) -> float:
        return max(self.intercept_s + self.slope_s * work, MIN_RUN_S)

    def total_s(self, jobs: int, work: float) -> float:
        """The run time of `jobs` jobs of `work` in all (the line is summed over them)."""
        return max(jobs * self.intercept_s + self.slope_s * work, jobs * MIN_RUN_S)

    @classmethod
    def from_row(cls, row: CostSampleRow) -> CostFit:
        """Least squares where the sizes varied and the line is sane, else proportional."""
        n, mean_run, mean_work = row["samples"], row["mean_run_s"], row["mean_work"]
        slope, intercept, var_work = row["slope"], row["intercept"], row["var_work"] or 0.0
        varied = n >= 3 and var_work > (0.05 * mean_work) ** 2
        if varied and slope is not None and intercept is not None and slope > 0 <= intercept:
            return cls(intercept, slope, n)
        if mean_work > 0:
            return cls(0.0, mean_run / mean_work, n)
        return cls(mean_run, 0.0, n)


# About SD 1.5 on one current GPU (512 x 512 at 30 steps is 7.9 megapixel-steps: ~1.3 s).
PRIOR = CostFit(0.5, 0.1, 0)


def pooled(fits: Iterable[CostFit]) -> CostFit | None:
    """The fits of several hosts as one, weighted by their samples; None for none."""
    fits = list(fits)
    total = sum(f.samples for f in fits)
    if total == 0:
        return None
    return CostFit(
        sum(f.intercept_s * f.samples for f in fits) / total,
        sum(f.slope_s * f.samples for f in fits) / total,
        total,
    )
