"""pytest plugin of dind-dood-harness: markers, options and fixtures.

Fixtures fail, never skip, when the engine is down: a suite that silently skips every
integration test would report green on a broken machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

MARKERS = {
    "engine": "needs the provisioned Docker engine",
    "images": "needs the stand-in images",
    "registry": "needs the local registry",
    "dind": "runs jobs with a docker:dind service",
    "dood": "runs jobs with the host socket mounted",
    "k8s": "runs Kubernetes pod shapes on the engine",
    "slow": "takes more than a minute",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


@pytest.fixture(scope="session")
def engine_client() -> Iterator["docker.DockerClient"]:
    """A docker-py client for the engine at ``DOCKER_HOST`` or the default socket.

    Fails the test with the command that starts an engine when none answers.
    """
    from harness import engine
    from harness.errors import EngineError

    try:
        client = engine.require_engine()
    except EngineError as error:
        pytest.fail(str(error), pytrace=False)
    yield client
    client.close()
