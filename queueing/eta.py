"""Estimated seconds until a queued job starts, per model (contract: ETA).

A model's live GPUs free up after r_1 <= ... <= r_W seconds (the cost model's run time of each
one's current job, less what it has run; 0 when idle). The k jobs ahead of a job need T seconds
of GPU time in all (the cost model's line summed over them: k * a + b * their total work, which
the position's index pass sums). Spread over the GPUs as they free up, that work is done at the
water level t where sum(max(0, t - r_i)) = T; and with k < W jobs ahead the job starts by r_(k+1)
at the latest, when a (k+1)-th GPU is free. The ETA is the smaller of the two.

Fair share lets a job queued later start earlier (contract: Fair share), so the work ahead now
is only a floor of the work that will run first. Start-time fair queuing says how much more:
the queue is taken in start-tag order, and a user served now whose jobs so far end at finish
tag F (on the model's fair-share clock) keeps getting its share, so while it stays busy its
next jobs, tagged from F on, go ahead of a job of tag S: (S - F) * its weight GPU-seconds more,
where F < S (a user whose queued jobs reach past S has every job that goes first queued now).
The ETA spreads the work ahead plus that. Both grow with the position (k and T only grow, and
so do the tags along it within a priority), so the ETA never falls as the position rises. With
one GPU and nobody else served it is exactly r_1 + T. Gradio's rank_eta multiplies the rank by
a mean of past run times; this knows the size of every job ahead, the work already done on the
running ones, and how many GPUs serve the model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .cost_model import PRIOR, CostFit, pooled
from .rows import CostSampleRow, EtaGpuRow, EtaShareRow


@dataclass(frozen=True)
class Share:
    """A model's fair-share backlogs: for each user it serves now, the latest finish tag of
    that user's jobs and the user's weight."""

    backlogs: tuple[tuple[float, float], ...]

    def to_come_s(self, start_tag: float) -> float:
        """GPU-seconds the users served now will still queue ahead of a job of this tag, beyond
        their jobs queued now, as long as they stay busy."""
        return sum(weight * max(0.0, start_tag - finish) for finish, weight in self.backlogs)


@dataclass(frozen=True)
class ModelEta:
    """One model's ETA inputs: its cost fit (None until one of its jobs completed), when each
    of its live GPUs is free, soonest first, and its fair-share clock."""

    fit: CostFit | None
    free_in_s: tuple[float, ...]
    share: Share | None = None

    def eta_s(
        self,
        queue_position: int,
        work_ahead: float,
        start_tag: float | None = None,
        not_before_s: float = 0.0,
    ) -> float | None:
        """Seconds until the job at this 1-based position starts; None when unknown (no fit, or
        no live GPU serves the model).

        `work_ahead`: the total work of the jobs ahead; `start_tag`: the job's fair-share tag
        (None: the work ahead alone). `not_before_s`: how long the job still
        waits out a retry's backoff (its run_after): it keeps its place, but no worker takes it
        before then, whatever the slots say.
        """
        if self.fit is None or not self.free_in_s or queue_position < 1:
            return None
        ahead = queue_position - 1
        work_s = self.fit.total_s(ahead, work_ahead)
        if start_tag is not None and self.share is not None:
            work_s += self.share.to_come_s(start_tag)
        start = water_level(self.free_in_s, work_s)
        if ahead < len(self.free_in_s):
            start = min(start, self.free_in_s[ahead])
        return round(max(start, not_before_s), 1)


def water_level(free_in_s: tuple[float, ...], work_s: float) -> float:
    """The time t at which GPUs free after `free_in_s` (sorted) have done `work_s` seconds of
    work between them: sum(max(0, t - r)) = work_s."""
    total = 0.0
    for used, free in enumerate(free_in_s, start=1):
        total += free
        level = (work_s + total) / used
        if used == len(free_in_s) or level <= free_in_s[used]:
            return level
    raise ValueError("no GPU")


UNKNOWN = ModelEta(None, ())


@dataclass(frozen=True)
class EtaModel:
    """The cost fits per (model, host) and the ETA inputs of every model with a live GPU."""

    fits: Mapping[tuple[str, str], CostFit] = field(default_factory=dict)
    models: Mapping[str, ModelEta] = field(default_factory=dict)

    @classmethod
    def from_rows(
        cls,
        samples: Iterable[CostSampleRow],
        gpus: Iterable[EtaGpuRow],
        shares: Iterable[EtaShareRow] = (),
    ) -> EtaModel:
        """Build from the cost_samples, eta_gpus and eta_shares queries' rows."""
        fits = {(r["model"], r["host"]): CostFit.from_row(r) for r in samples}
        hosts: dict[str, set[str]] = defaultdict(set)
        free: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        gpu_rows = list(gpus)
        for row in gpu_rows:
            hosts[row["model"]].add(row["host"])
        model_fits = {
            model: pooled(f for (m, host), f in fits.items() if m == model and host in live)
            or pooled(f for (m, _), f in fits.items() if m == model)
            for model, live in hosts.items()
        }
        for row in gpu_rows:
            model, gpu = row["model"], (row["host"], row["device"])
            left = 0.0
            if row["work"] is not None:
                fit = fits.get((model, row["host"])) or model_fits[model] or PRIOR
                left = max(0.0, fit.run_s(row["work"]) - (row["elapsed_s"] or 0.0))
            free[model][gpu] = max(left, free[model].get(gpu, 0.0))  # one GPU, two workers
        share_of = {
            r["model"]: Share(tuple(zip(r["finish_tags"], r["weights"], strict=True)))
            for r in shares
        }
        models = {
            model: ModelEta(model_fits[model], tuple(sorted(slots.values())), share_of.get(model))
            for model, slots in free.items()
        }
        return cls(fits, models)

    def eta_s(
        self,
        model: str,
        queue_position: int,
        work_ahead: float,
        start_tag: float | None = None,
        not_before_s: float = 0.0,
    ) -> float | None:
        return self.models.get(model, UNKNOWN).eta_s(
            queue_position, work_ahead, start_tag, not_before_s
        )

    def cost(self, model: str) -> CostFit:
        """What a new job of the model is expected to cost: its hosts' fits, else the prior."""
        return pooled(f for (m, _), f in self.fits.items() if m == model) or PRIOR


def backoff_left_s(run_after: str | datetime | None, now: datetime | None = None) -> float:
    """Seconds until `run_after` (a job's JSON field, ISO 8601), 0 when it has passed."""
    if run_after is None:
        return 0.0
    at = datetime.fromisoformat(run_after) if isinstance(run_after, str) else run_after
    return max(0.0, (at - (now or datetime.now(UTC))).total_seconds())
