"""The seed pipeline in each mode, and the whole test suite with and without pytest-xdist."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.dind_job import REPO_DIR, local_engine_env
from bench.rounds import Contender, timed_command


def seed_contenders(work_dir: Path, host_engine: str = "sandbox") -> dict[str, Contender]:
    """Return one contender per seed mode, each a whole `harness run seed --mode MODE` on ``host_engine``.

    Both modes run on the same host engine, so their ratio compares the modes and not the hosts.
    """
    env = local_engine_env()

    def mode_runner(mode: str) -> Contender:
        def one_round(round_index: int) -> float:
            return timed_command([sys.executable, "-m", "harness.cli", "run", "seed", "--mode", mode,
                                  f"--host-engine={host_engine}"],
                                 work_dir / f"seed-{mode}-{round_index}.log", cwd=REPO_DIR, env=env)
        return one_round

    return {"ours dind": mode_runner("dind"), "ours dood": mode_runner("dood")}


def suite_contenders(work_dir: Path) -> dict[str, Contender]:
    """Return `pytest -n 0` and `pytest -n 2` over the whole suite."""
    env = local_engine_env()

    def workers(count: int) -> Contender:
        def one_round(round_index: int) -> float:
            return timed_command([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(count)],
                                 work_dir / f"suite-n{count}-{round_index}.log", cwd=REPO_DIR, env=env,
                                 timeout=3600)
        return one_round

    return {"-n 0": workers(0), "-n 2": workers(2)}
