"""Wall time of a benchmark run, per benchmark and in total, with the machine's load average beside it."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# `make bench` aims to finish the benchmarks within this many minutes on a 2-core machine. The
# set-up steps before them (npm install, image builds) are not part of it.
WALL_TIME_LIMIT_MINUTES = 15.0
LOAD_SAMPLE_INTERVAL = 10.0


@dataclass
class StepTime:
    """Wall-clock seconds of one benchmark, and the 1-minute load averages sampled while it ran."""

    seconds: float = 0.0
    loads: list[float] = field(default_factory=list)


def one_minute_load() -> float:
    """Return the machine's 1-minute load average."""
    return os.getloadavg()[0]


@dataclass
class RunClock:
    """Wall-clock seconds of a whole run and of each benchmark in it, with load average samples."""

    started: float = field(default_factory=time.monotonic)
    steps: dict[str, StepTime] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)
    read_load: Callable[[], float] = one_minute_load

    def sample_load(self) -> None:
        """Append one reading of the load average to ``loads``."""
        self.loads.append(self.read_load())

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the block as benchmark ``name`` and file the load samples taken meanwhile under it.

        The load is also read at the start and the end, so a step shorter than the sampling
        interval still has samples.
        """
        first_sample = len(self.loads)
        self.sample_load()
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.sample_load()
            record = self.steps.setdefault(name, StepTime())
            record.seconds += seconds
            record.loads += self.loads[first_sample:]

    def total(self) -> float:
        """Return the seconds since the clock started."""
        return time.monotonic() - self.started


class LoadSampler:
    """Append the 1-minute load average to a RunClock every ``interval`` seconds, in a daemon thread."""

    def __init__(self, clock: RunClock, interval: float = LOAD_SAMPLE_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-load-sampler", daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self._clock.sample_load()
            if self._stop.wait(self._interval):
                return


def wall_time_line(total: float) -> str:
    """Render the total wall time in minutes and whether it is within the limit."""
    verdict = "within" if total <= WALL_TIME_LIMIT_MINUTES * 60 else "over"
    return f"{total / 60:.1f} min, {verdict} the {WALL_TIME_LIMIT_MINUTES:.0f}-minute limit"


def step_table(clock: RunClock) -> str:
    """Render one markdown row per benchmark: its wall time and the load average while it ran."""
    lines = ["| benchmark | wall time min | load average (1 min) while it ran |", "|---|---:|---|"]
    for name, record in clock.steps.items():
        lines.append(f"| {name} | {record.seconds / 60:.1f} | {load_summary(record.loads)} |")
    return "\n".join(lines)


def load_summary(loads: list[float]) -> str:
    """Render min, median and max of load average samples, or "not sampled"."""
    if not loads:
        return "not sampled"
    return f"min {min(loads):.1f}, median {statistics.median(loads):.1f}, max {max(loads):.1f}"
