"""pytest-xdist groups: tests that must run on one worker so that their expensive work happens once.

The suite runs with ``--dist loadgroup`` (``addopts`` in ``pyproject.toml``). Each group goes to
one worker as a whole; every other test is handed out on its own. A group is needed where
worker-local state is expensive to build twice, or where a machine-wide lock would make the
second worker wait:

- a cached scenario run (the ``run_scenario`` fixture caches per worker, so a pipeline whose
  tests land on both workers runs twice),
- a module-scoped fixture that starts daemons or pods,
- a lock from ``harness.locks`` that several tests take.

Without ``--dist loadgroup`` (``-n 0``, or ``--dist load``) the marks change nothing.
"""

from __future__ import annotations

import pytest

# Tests that read the seed pipeline's cached runs in either mode.
SEED_RUNS = pytest.mark.xdist_group("seed-runs")

# Tests that read the d14 scenario's cached runs.
D14_RUNS = pytest.mark.xdist_group("d14-runs")

# The two D10 runs change the real engine under one machine-wide lock.
D10_REAL_ENGINE = pytest.mark.xdist_group("d10-real-engine")

# The pod tests: a module-scoped pod, and the d20 node directory's lock.
KUBERNETES_PODS = pytest.mark.xdist_group("kubernetes-pods")

# The Kubernetes executor's module-scoped seed pipeline in pods (106 s and 113 s in two -n 2 runs).
KUBERNETES_EXECUTOR = pytest.mark.xdist_group("kubernetes-executor")

# The stand-in images' module-scoped dind daemons, with and without TLS.
DOCKER_STANDINS = pytest.mark.xdist_group("docker-standins")

# Scenario folders whose runs other modules read from the same cache, by group.
SHARED_SCENARIO_RUNS = {"seed": SEED_RUNS, "d14-concurrent-jobs-same-project": D14_RUNS}
