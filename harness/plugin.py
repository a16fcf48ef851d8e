"""pytest plugin of dind-dood-harness: markers, options and fixtures."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    for marker in ("engine", "images", "registry", "dind", "dood", "k8s", "slow"):
        config.addinivalue_line("markers", f"{marker}: dind-dood-harness marker")
