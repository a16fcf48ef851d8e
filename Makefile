# Set-up and test entry points. Every target provisions what it needs, so each one works on a
# fresh Debian machine as root: the Python package, the Docker engine, the stand-in images.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install engine images doctor test demo clean

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

engine: install
	harness engine up

images: engine
	harness images build

doctor: images
	harness doctor

test: images
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: images
	harness demo

clean:
	harness clean
