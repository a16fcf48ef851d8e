"""``share_builds_with_services``: which binds service containers receive."""

from __future__ import annotations

from harness.executor.settings import ExecutorSettings
from harness.executor.volumes import without_path
from harness.runner_config import RunnerConfig

BINDS = ["runner-abc-cache-1:/cache", "runner-abc-cache-2:/builds", "/srv/extra:/builds/group/app/extra",
         "/var/run/docker.sock:/var/run/docker.sock"]


def test_without_path_drops_builds_volume():
    kept = without_path(BINDS, "/builds")

    assert "runner-abc-cache-2:/builds" not in kept
    assert "/srv/extra:/builds/group/app/extra" not in kept
    assert kept == ["runner-abc-cache-1:/cache", "/var/run/docker.sock:/var/run/docker.sock"]


def test_without_path_keeps_similar_prefix():
    assert without_path(["vol:/builds-other"], "/builds") == ["vol:/builds-other"]


def test_sharing_defaults_to_true():
    config = RunnerConfig.from_dict({"runners": [{"name": "r", "executor": "docker", "docker": {"image": "busybox"}}]})

    assert config.docker.share_builds_with_services is True
    assert ExecutorSettings.from_config(config).share_builds_with_services is True


def test_sharing_false_reaches_executor():
    config = RunnerConfig.from_dict({"runners": [{"name": "r", "executor": "docker",
                                                  "docker": {"image": "busybox",
                                                             "share_builds_with_services": False}}]})

    assert config.docker.share_builds_with_services is False
    assert ExecutorSettings.from_config(config).share_builds_with_services is False
