"""Medians, ratios and the markdown table of a benchmark run (pure functions, no engine)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Series:
    """Wall-clock seconds of one contender in one benchmark, one value per round."""

    benchmark: str
    contender: str
    seconds: list[float] = field(default_factory=list)
    # Rounds that failed are counted, not timed, so a fast failure never lowers the median.
    failures: int = 0

    @property
    def median(self) -> float | None:
        """Median of the successful rounds, or None when no round succeeded."""
        return statistics.median(self.seconds) if self.seconds else None


@dataclass(frozen=True)
class Comparison:
    """One ratio the report quotes: ``numerator`` median over ``denominator`` median."""

    benchmark: str
    numerator: str
    denominator: str
    # The target the issue sets, such as 1.10 for "at most 1.10x", or None for no target.
    target_max: float | None = None
    target_min: float | None = None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return ``numerator / denominator``, or None when either is missing or the divisor is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def find(series: list[Series], benchmark: str, contender: str) -> Series | None:
    """Return the series of ``contender`` in ``benchmark``, or None."""
    for item in series:
        if item.benchmark == benchmark and item.contender == contender:
            return item
    return None


def median_table(series: list[Series]) -> str:
    """Render one markdown row per series: benchmark, contender, rounds, median and spread in seconds."""
    lines = ["| benchmark | contender | rounds | failed | median s | min s | max s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for item in series:
        low = f"{min(item.seconds):.2f}" if item.seconds else "-"
        high = f"{max(item.seconds):.2f}" if item.seconds else "-"
        lines.append(f"| {item.benchmark} | {item.contender} | {len(item.seconds)} | {item.failures} "
                     f"| {_seconds(item.median)} | {low} | {high} |")
    return "\n".join(lines)


def ratio_table(series: list[Series], comparisons: list[Comparison]) -> str:
    """Render one markdown row per comparison with its ratio, target and whether the target is met."""
    lines = ["| benchmark | ratio | value | target | met |", "|---|---|---:|---|---|"]
    for comparison in comparisons:
        top = find(series, comparison.benchmark, comparison.numerator)
        bottom = find(series, comparison.benchmark, comparison.denominator)
        value = ratio(top.median if top else None, bottom.median if bottom else None)
        lines.append(f"| {comparison.benchmark} | {comparison.numerator} / {comparison.denominator} "
                     f"| {_times(value)} | {_target(comparison)} | {_met(value, comparison)} |")
    return "\n".join(lines)


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Return (intercept, slope) of the least-squares line through ``points``, or None for fewer than 2 x values."""
    if len({x for x, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return intercept, slope


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _target(comparison: Comparison) -> str:
    if comparison.target_max is not None:
        return f"<= {comparison.target_max:.2f}x"
    if comparison.target_min is not None:
        return f">= {comparison.target_min:.2f}x"
    return "-"


def _met(value: float | None, comparison: Comparison) -> str:
    if value is None:
        return "not measured"
    if comparison.target_max is not None:
        return "yes" if value <= comparison.target_max else "no"
    if comparison.target_min is not None:
        return "yes" if value >= comparison.target_min else "no"
    return "-"
