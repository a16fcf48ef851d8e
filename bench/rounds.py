"""Interleaved A/B rounds: every round runs each contender once, in a rotating order."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.stats import Series

log = logging.getLogger(__name__)

# A contender runs one round and returns its wall-clock seconds; it raises RoundFailed on failure.
Contender = Callable[[int], float]


class RoundFailed(Exception):
    """One round of one contender failed; the message says where its output is."""


def run_rounds(benchmark: str, contenders: dict[str, Contender], rounds: int) -> list[Series]:
    """Run ``rounds`` rounds of every contender and return one series per contender.

    The order rotates from round to round, so a slow phase of the shared machine (another
    process's build, a page-cache flush) falls on each contender in turn, not always on one.
    """
    names = list(contenders)
    series = {name: Series(benchmark, name) for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            try:
                seconds = contenders[name](round_index)
            except RoundFailed as error:
                series[name].failures += 1
                log.warning("%s: %s round %d failed: %s", benchmark, name, round_index + 1, error)
                continue
            series[name].seconds.append(seconds)
            log.info("%s: %s round %d: %.2f s", benchmark, name, round_index + 1, seconds)
    return list(series.values())


def timed_command(command: Sequence[str], log_path: Path, cwd: Path | None = None,
                  env: dict[str, str] | None = None, timeout: float = 900) -> float:
    """Run ``command``, write its output to ``log_path`` and return its wall-clock seconds.

    Raises:
        RoundFailed: the command exited non-zero or ran longer than ``timeout`` seconds.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("w") as output:
        try:
            completed = subprocess.run(list(command), cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                       timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RoundFailed(f"timed out after {timeout:.0f} s; output in {log_path}") from None
    elapsed = time.monotonic() - started
    if completed.returncode != 0:
        raise RoundFailed(f"exit code {completed.returncode}; output in {log_path}")
    return elapsed
