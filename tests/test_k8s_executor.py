"""Kubernetes executor job pods: the seed pipeline with its placement, service aliases, the dind race."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.kubernetes_executor import KubernetesExecutor
from harness.kubernetes_node import Node
from harness.kubernetes_pipeline import run_folder_pipeline, run_pipeline_in_pods
from harness.scenario import load_scenario
from harness.variables import Variable

from worker_groups import KUBERNETES_EXECUTOR

pytestmark = [pytest.mark.k8s, pytest.mark.engine, KUBERNETES_EXECUTOR]

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
SEED_IMAGE = "registry.cn-beijing.aliyuncs.com/devopsman/marionxue-ops:nodedemo"
CERTS_EMPTY_DIR = (("docker-certs", "/certs/client"),)


def _printed(trace: str, line: str) -> bool:
    """Return whether the job printed ``line`` on its own, not only as part of an echoed command."""
    return re.search(rf"^{re.escape(line)}\r?$", trace, re.MULTILINE) is not None


@pytest.fixture(scope="module")
def seed_in_pods(engine_client, host_engine):
    """The seed's DinD pipeline in job pods; HEALTHCHECK_TCP_PORT makes the runner wait for dind."""
    return run_pipeline_in_pods(engine_client, load_scenario("seed"), "dind",
                                (Variable("HEALTHCHECK_TCP_PORT", "2375"),), host=host_engine)


def test_seed_jobs_succeed_in_pods(seed_in_pods):
    for job in seed_in_pods.jobs:
        assert job.status == "success", job.trace[-2000:]
    assert [job.name for job in seed_in_pods.jobs] == ["BuildImages", "TestImage"]
    # Catches a runner that starts the script without waiting for the health-checked service.
    assert seed_in_pods.job("BuildImages").waited_for == ["svc-0"]


def test_seed_image_in_sidecar_not_node(seed_in_pods):
    placement = seed_in_pods.placement
    # Catches a build that reached the node's engine instead of the dind sidecar.
    placement.image(SEED_IMAGE).in_daemon("dind:BuildImages").not_in("host")
    # Catches a TestImage pod that reused BuildImages' daemon instead of pulling from the registry.
    placement.image(SEED_IMAGE).in_daemon("dind:TestImage")
    placement.container("nodedemo").running_on("dind:TestImage")
    placement.container("nodedemo").not_in("host")


def test_seed_registry_holds_tag(seed_in_pods):
    # Catches a push that never reached the registry through the pod's hostAliases and certs.
    assert seed_in_pods.registry_tags.get("devopsman/marionxue-ops") == ["nodedemo"]


def test_alias_and_localhost_reach_dind(engine_client, host_engine):
    executor = KubernetesExecutor(engine_client, node=Node(host_engine))
    [job] = run_folder_pipeline(engine_client, SCENARIOS / "k8s-d04-service-alias", executor)
    # Catches service aliases missing from the pod's hostAliases.
    assert job.status == "success", job.trace
    assert _printed(job.trace, "localhost:2375 reached")
    assert _printed(job.trace, "docker:2375 reached")


def test_alias_fails_without_host_aliases(engine_client, host_engine):
    executor = KubernetesExecutor(engine_client, write_host_aliases=False, node=Node(host_engine))
    [job] = run_folder_pipeline(engine_client, SCENARIOS / "k8s-d04-service-alias", executor)
    # Catches an emulation that resolves service names some other way than hostAliases.
    assert job.status == "failed", job.trace
    assert _printed(job.trace, "localhost:2375 reached")
    assert not _printed(job.trace, "docker:2375 reached")
    assert "Cannot connect to the Docker daemon at tcp://docker:2375" in job.trace


def test_first_command_races_dind(engine_client, host_engine):
    executor = KubernetesExecutor(engine_client, empty_dirs=CERTS_EMPTY_DIR, node=Node(host_engine))
    [job] = run_folder_pipeline(engine_client, SCENARIOS / "k8s-d09-dind-race", executor)
    # Catches a runner that waits for services without HEALTHCHECK_TCP_PORT, hiding the race.
    assert job.waited_for == []
    assert job.status == "failed", job.trace
    assert "/certs/client" in job.trace or "Cannot connect to the Docker daemon" in job.trace, job.trace


def test_health_check_port_waits_for_dind(engine_client, host_engine):
    executor = KubernetesExecutor(engine_client, empty_dirs=CERTS_EMPTY_DIR, node=Node(host_engine))
    [job] = run_folder_pipeline(engine_client, SCENARIOS / "k8s-d09-dind-race", executor,
                                (Variable("HEALTHCHECK_TCP_PORT", "2376"),))
    # Catches a health check that returns before dockerd listens with its certificates written.
    assert job.waited_for == ["svc-0"]
    assert job.status == "success", job.trace
    assert "server " in job.trace
