"""Figures, their targets, and the one table every run prints and writes."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PASS = "PASS"
MISS = "MISS"
INFO = "—"
NOT_RUN = "NOT RUN"
SKIPPED = "SKIPPED"  # nothing to measure it on here (no CUDA device): not a failure of the run

Kind = Literal["max", "min", "ratio_max", "ratio_min"]


@dataclass(frozen=True)
class Target:
    """One bound a figure must meet: on its value (max/min) or on ours/baseline (ratio_*)."""

    kind: Kind
    value: float
    unit: str = ""

    def met(self, figure: Figure) -> bool | None:
        if self.kind in ("max", "min"):
            if figure.ours is None:
                return None
            return figure.ours <= self.value if self.kind == "max" else figure.ours >= self.value
        ratio = figure.ratio
        if ratio is None:
            return None
        return ratio <= self.value if self.kind == "ratio_max" else ratio >= self.value

    def describe(self) -> str:
        sign = "≤" if self.kind in ("max", "ratio_max") else "≥"
        if self.kind.startswith("ratio"):
            return f"{sign} {self.value:g}x baseline"
        if self.unit == "%":
            return f"{sign} {self.value:g} %"
        return f"{sign} {fmt(self.value, self.unit)}"


def at_most(value: float, unit: str) -> Target:
    return Target("max", value, unit)


def at_least(value: float, unit: str) -> Target:
    return Target("min", value, unit)


def ratio_at_most(value: float) -> Target:
    return Target("ratio_max", value)


def ratio_at_least(value: float) -> Target:
    return Target("ratio_min", value)


@dataclass
class Figure:
    """One row of the table: our value, the baseline measured beside it, and the verdict."""

    family: str
    name: str
    at: str
    unit: str
    ours: float | None
    baseline: float | None = None
    baseline_is: str = ""  # what the baseline is: a ceiling (raw SQL, bare server) or a peer
    targets: tuple[Target, ...] = ()
    note: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    @property
    def verdict(self) -> str:
        if self.skipped:
            return SKIPPED
        if self.error or self.ours is None:
            return NOT_RUN
        if not self.targets:
            return INFO
        results = [t.met(self) for t in self.targets]
        if any(r is None for r in results):
            return NOT_RUN
        return PASS if all(results) else MISS

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "figure": self.name,
            "at": self.at,
            "unit": self.unit,
            "ours": self.ours,
            "baseline": self.baseline,
            "baseline_is": self.baseline_is,
            "ratio": self.ratio,
            "targets": [t.describe() for t in self.targets],
            "result": self.verdict,
            "note": self.note,
            "error": self.error,
            **({"extra": self.extra} if self.extra else {}),
        }


def not_run(family: str, name: str, reason: str) -> Figure:
    """A row that says plainly that a figure could not be measured, and why."""
    return Figure(family, name, "", "", None, error=reason)


def skipped(family: str, name: str, reason: str) -> Figure:
    """A row that this machine cannot measure (the gpu family without CUDA), and why."""
    return Figure(family, name, "", "", None, error=reason, skipped=True)


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "jobs/s":
        return f"{value:,.0f} jobs/s"
    if unit == "images/s":
        return f"{value:,.2f} images/s"
    if unit == "%":
        return f"{value:+.1f} %"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    if unit in ("ms", "s", "s/image"):
        digits = 3 if abs(value) < 1 else 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
        return f"{value:,.{digits}f} {unit}"
    return f"{value:g} {unit}".strip()


def _ratio_text(figure: Figure) -> str:
    ratio = figure.ratio
    return "—" if ratio is None else f"{ratio:.2f}x"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


HEADER = ("figure", "at", "ours", "baseline", "ours/baseline", "target", "result", "notes")


def rows(figures: Sequence[Figure]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for f in figures:
        baseline = fmt(f.baseline, f.unit) if f.baseline is not None else "—"
        if f.baseline_is and f.baseline is not None:
            baseline = f"{baseline} ({f.baseline_is})"
        target = "; ".join(t.describe() for t in f.targets) or "—"
        note = f.error if f.error else f.note
        out.append(
            (f.name, f.at, fmt(f.ours, f.unit), baseline, _ratio_text(f), target, f.verdict, note)
        )
    return out


def markdown(figures: Sequence[Figure]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows(figures):
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def write_results(
    directory: Path, figures: Sequence[Figure], meta: dict[str, Any], notes: Sequence[str]
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "latest.json"
    md_path = directory / "latest.md"
    payload = {**meta, "notes": list(notes), "figures": [f.to_json() for f in figures]}
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    counts = {v: sum(1 for f in figures if f.verdict == v) for v in (PASS, MISS, NOT_RUN, SKIPPED)}
    head = [
        "# gpuqueue benchmark: latest run",
        "",
        f"- started: {meta.get('started_at')}, wall time {meta.get('wall_s', 0):.0f} s"
        f"{' (quick mode: smaller sizes)' if meta.get('quick') else ''}",
        f"- PostgreSQL {meta.get('postgres')}, {meta.get('cpus')} CPUs, "
        f"commit {meta.get('commit')}",
        f"- {counts[PASS]} PASS, {counts[MISS]} MISS, {counts[NOT_RUN]} NOT RUN, "
        f"{counts[SKIPPED]} SKIPPED",
        "",
        "Ratios are ours/baseline, both measured in this run on the same database; absolute "
        "numbers drift ±20 % between runs on a shared machine. See bench/README.md.",
        "",
    ]
    tail = ["", "## Notes", "", *(f"- {n}" for n in notes)] if notes else []
    md_path.write_text("\n".join([*head, markdown(figures), *tail]) + "\n")
    return json_path, md_path
