# Set-up and test entry points. Every target provisions what it needs, so each one works on a
# fresh Debian machine as root: the Python package, the Docker engine, the stand-in images.
PYTHON ?= python3
# Two xdist workers, one per core; each gets its own sandbox host engine and session id.
PYTEST_ARGS ?= -n 2
# The module form works before the shell has seen the new console script on PATH.
HARNESS = $(PYTHON) -m harness.cli
# `make bench BENCH=suite` picks benchmarks (comma-separated); empty runs the default set.
BENCH ?=
BENCH_ROUNDS ?= 3
# A seed run takes 1 to 3 minutes, so one round of each mode keeps `make bench` within 15 minutes.
BENCH_SEED_ROUNDS ?= 1
# sandbox or local: local is faster, but only safe on an engine that no other process uses.
BENCH_SEED_HOST ?= sandbox
GITLAB_CI_LOCAL_VERSION = 4.60.0
GITLAB_CI_LOCAL = bench/.tools/node_modules/.bin/gitlab-ci-local
# A second, independent runner client for the coordinator's contract tests. gitlab-python-runner
# 14.3.20 imports names that gitlab-emulator dropped after 1.4.0, so both are pinned.
STATE_DIR ?= $(or $(HARNESS_STATE_DIR),/var/lib/dind-dood-harness)
PYTHON_RUNNER_VENV = $(STATE_DIR)/tools/gitlab-python-runner
PYTHON_RUNNER_PACKAGES = gitlab-python-runner==14.3.20 gitlab-emulator==1.4.0

.PHONY: install engine images browser python-runner doctor test demo clean bench-tools bench

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

engine: install
	$(HARNESS) engine up

images: engine
	$(HARNESS) images build

# Headless Chromium for the placement report's browser test; installed only when missing.
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Its own virtual environment, so its old pins never meet the harness's dependencies.
python-runner:
	test -x $(PYTHON_RUNNER_VENV)/bin/gitlab-runner.py || { $(PYTHON) -m venv $(PYTHON_RUNNER_VENV) && \
		$(PYTHON_RUNNER_VENV)/bin/pip install --quiet --disable-pip-version-check $(PYTHON_RUNNER_PACKAGES); }

doctor: images
	$(HARNESS) doctor

test: images browser python-runner
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: images
	$(HARNESS) demo

clean:
	$(HARNESS) clean

# The peer of the benchmark: gitlab-ci-local from npm in a directory the benchmark owns, plus the
# rsync it calls on the host and the plotting library of the results chart. It waits for `install`,
# so its pip never runs beside the package's own.
bench-tools: install
	command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	command -v rsync >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync; }
	test -x $(GITLAB_CI_LOCAL) || npm install --prefix bench/.tools --no-audit --no-fund --save-exact gitlab-ci-local@$(GITLAB_CI_LOCAL_VERSION)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check 'matplotlib>=3.7' 'pyinstrument>=4.6'

# The tools come over the network and the image builds keep the CPU busy, so they run side by side.
# The engine comes first: its apt packages and those of bench-tools would contend for apt's lock.
bench: engine
	$(MAKE) --no-print-directory -j2 images bench-tools
	$(PYTHON) -m bench --rounds $(BENCH_ROUNDS) --seed-rounds $(BENCH_SEED_ROUNDS) \
	  --seed-host-engine $(BENCH_SEED_HOST) $(if $(BENCH),--only $(BENCH))
