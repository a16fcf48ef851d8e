# Set-up and test entry points. Every target provisions what it needs, so each one works on a
# fresh Debian machine as root: the Python package, the Docker engine, the stand-in images.
PYTHON ?= python3
PYTEST_ARGS ?=
# The module form works before the shell has seen the new console script on PATH.
HARNESS = $(PYTHON) -m harness.cli

.PHONY: install engine images browser doctor test demo clean

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

engine: install
	$(HARNESS) engine up

images: engine
	$(HARNESS) images build

# Headless Chromium for the placement report's browser test; installed only when missing.
browser:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

doctor: images
	$(HARNESS) doctor

test: images browser
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: images
	$(HARNESS) demo

clean:
	$(HARNESS) clean
