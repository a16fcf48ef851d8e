"""Write a run's results to bench/results/: a markdown page and a PNG chart."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
from pathlib import Path

from bench.stats import Comparison, Series, linear_fit, median_table, ratio_table


def growth_table(series: list[Series], megabytes: dict[str, float]) -> str:
    """Render seconds per MB and fixed seconds of each seeding method, from a least-squares fit."""
    lines = ["| method | fixed s | s per MB | sizes |", "|---|---:|---:|---|"]
    for method in ("mirror push", "mirror pull", "save-load"):
        points = []
        for item in series:
            size = _size_of(item, megabytes)
            if item.contender == method and size is not None and item.median is not None:
                points.append((size, item.median))
        fit = linear_fit(points)
        sizes = ", ".join(f"{size:g}" for size, _ in sorted(points))
        if fit is None:
            lines.append(f"| {method} | - | - | {sizes or 'none'} |")
        else:
            lines.append(f"| {method} | {fit[0]:.2f} | {fit[1]:.4f} | {sizes} MB |")
    return "\n".join(lines)


def _size_of(item: Series, megabytes: dict[str, float]) -> float | None:
    """Return the image size of a seeding series, or None for series of other benchmarks."""
    for name, size in megabytes.items():
        if item.benchmark in (f"seeding {name}", f"mirror push {name.replace(' MB', 'mb')}"):
            return size
    return None


def write_markdown(path: Path, series: list[Series], comparisons: list[Comparison], header: dict[str, str],
                   megabytes: dict[str, float], step_table: str = "") -> str:
    """Write the results page and return its text."""
    facts = "\n".join(f"- {key}: {value}" for key, value in header.items())
    parts = [f"# Benchmark results\n\n{facts}\n", "## Ratios\n", ratio_table(series, comparisons) + "\n",
             "## Medians\n", median_table(series) + "\n"]
    if megabytes:
        parts += ["## Seeding cost against image size\n", growth_table(series, megabytes) + "\n"]
    if step_table:
        parts += ["## Wall time per benchmark\n", step_table + "\n"]
    text = "\n".join(parts)
    path.write_text(text)
    return text


def run_header(args, selection: list[str], engine_version: str, argv: list[str]) -> dict[str, str]:
    """Return the facts a results page starts with: when, where and how it was measured."""
    rounds = str(args.rounds)
    if "seed" in selection:
        rounds += f", the seed benchmark {args.seed_rounds}"
    header = {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {_cpu_count()} CPUs, Python {platform.python_version()}",
        "engine": f"Docker {engine_version}",
        "rounds": rounds,
    }
    if "seed" in selection:
        header["seed host engine"] = args.seed_host_engine
    if "seeding" in selection:
        header["seeding sizes"] = f"{args.seed_sizes} MB"
    header["benchmarks"] = ", ".join(selection)
    # make exports MAKELEVEL to the commands of its recipes.
    command = shlex.join(["python", "-m", "bench", *argv])
    header["command"] = f"make bench, which ran {command}" if "MAKELEVEL" in os.environ else command
    return header


def _cpu_count() -> int:
    return os.cpu_count() or 0


def write_chart(path: Path, series: list[Series], megabytes: dict[str, float]) -> None:
    """Draw one panel per benchmark group: median bars with min-max whiskers, seeding as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _bar_groups(series)
    panels = len(groups) + (1 if megabytes else 0)
    if panels == 0:
        return
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    for axis, (title, items) in zip(axes[0], groups.items()):
        _draw_bars(axis, title, items)
    if megabytes:
        _draw_growth(axes[0][-1], series, megabytes)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _bar_groups(series: list[Series]) -> dict[str, list[Series]]:
    groups: dict[str, list[Series]] = {}
    for item in series:
        if item.benchmark.startswith(("seeding", "mirror push")) or item.median is None:
            continue
        groups.setdefault(item.benchmark, []).append(item)
    return groups


def _draw_bars(axis, title: str, items: list[Series]) -> None:
    medians = [item.median for item in items]
    low = [item.median - min(item.seconds) for item in items]
    high = [max(item.seconds) - item.median for item in items]
    axis.bar(range(len(items)), medians, yerr=[low, high], capsize=4, color="#4c72b0")
    axis.set_xticks(range(len(items)), [item.contender for item in items], rotation=20, ha="right")
    axis.set_title(title)
    axis.set_ylabel("seconds (median, min-max)")


def _draw_growth(axis, series: list[Series], megabytes: dict[str, float]) -> None:
    for method, marker in (("mirror push", "s"), ("mirror pull", "o"), ("save-load", "^")):
        points = sorted((_size_of(item, megabytes), item.median) for item in series
                        if item.contender == method and _size_of(item, megabytes) is not None and item.median)
        if points:
            axis.plot([x for x, _ in points], [y for _, y in points], marker=marker, label=method)
    axis.set_title("seeding an empty nested daemon")
    axis.set_xlabel("image size (MB)")
    axis.set_ylabel("seconds (median)")
    axis.legend()
