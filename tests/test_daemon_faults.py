"""Daemon faults during real jobs: the job fails naming the fault, cleanup completes, the next run works.

Two faults are caused for real. The dind service container is killed while ``docker build``
runs inside it. The harness registry is stopped while ``docker push`` uploads a layer to it.

NOTE: "the engine stops mid-job" is not tested here, because stopping the shared host engine
would break every other session on it. It needs a disposable sandbox engine per session.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from pathlib import Path

import docker
import pytest

from harness import labels
from harness.run import RunOptions, RunResult, run_scenario, shared_mirror
from harness.scenario import load_scenario

SEED = Path(__file__).resolve().parent.parent / "scenarios" / "seed"
REGISTRY_HOST = "registry.faults.example.com"
DIND = "docker:19.03.7-dind"
FAULT_WAIT_SECONDS = 240
RUN_SECONDS = 600

SCENARIO_TOML = f"""
name = "faults"
purpose = "daemons that stop under a running job"

[project]
path = "project"
namespace = "group"
name = "faults"
branch = "main"

[registry]
hostname = "{REGISTRY_HOST}"

[modes.dind]
pipeline = "project/.gitlab-ci.yml"
runner_config = "config.dind.toml"
"""

PIPELINE = rf"""
image: docker:stable
services:
  - {DIND}
variables:
  DOCKER_HOST: tcp://docker:2375
  DOCKER_TLS_CERTDIR: ""

BuildSlowly:
  script:
    - printf 'FROM busybox\nRUN echo fault-marker && sleep 120\n' > Dockerfile
    - docker build -t faults/slow:1 .

PushLarge:
  script:
    - docker login -u "$REGISTRY_USER" -p "$REGISTRY_PASSWORD" "$REGISTRY_ADDRESS"
    - printf 'FROM busybox\nRUN head -c 200000000 /dev/urandom > /blob\n' > Dockerfile
    - docker build -t "$REGISTRY_ADDRESS/group/large:1" .
    # dockerd 20.10 retries a failed upload 5 times with growing delays (2 minutes here), so the
    # job stops waiting earlier.
    - timeout 30 docker push "$REGISTRY_ADDRESS/group/large:1"

PushSmall:
  script:
    - docker login -u "$REGISTRY_USER" -p "$REGISTRY_PASSWORD" "$REGISTRY_ADDRESS"
    - printf 'FROM busybox\nRUN echo small > /small\n' > Dockerfile
    - docker build -t "$REGISTRY_ADDRESS/group/small:1" .
    - docker push "$REGISTRY_ADDRESS/group/small:1"
"""


@pytest.fixture
def faults_scenario(tmp_path: Path):
    folder = tmp_path / "faults"
    (folder / "project").mkdir(parents=True)
    (folder / "scenario.toml").write_text(SCENARIO_TOML)
    (folder / "project" / ".gitlab-ci.yml").write_text(PIPELINE)
    (folder / "project" / "README.md").write_text("faults\n")
    shutil.copy(SEED / "config.dind.toml", folder / "config.dind.toml")
    return load_scenario(folder)


def session_resources(client: docker.DockerClient) -> set[str]:
    """Return every container, network and volume that carries this session's labels."""
    session = labels.session_filter()
    found = {f"container {c.name}" for c in client.containers.list(all=True, filters=session)}
    found |= {f"network {n.name}" for n in client.networks.list(filters=session)}
    found |= {f"volume {v.name}" for v in client.volumes.list(filters=session)}
    return found


def leftovers(client, before: set[str], *results: RunResult) -> set[str]:
    """Return what the runs left beyond ``before``, except the cache volumes the runner keeps on purpose."""
    cache_volumes = {f"volume {volume['name']}" for result in results for job in result.jobs
                     for volume in job.details.get("volumes", []) if volume.get("reusable")}
    return session_resources(client) - before - cache_volumes


def run_with_fault(client, scenario, job: str, cause_fault) -> RunResult:
    """Run ``job`` of ``scenario`` in a thread while ``cause_fault(client)`` breaks a daemon under it."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        run = pool.submit(run_scenario, client, scenario, "dind", RunOptions(jobs=(job,)))
        try:
            cause_fault(client, run)
        finally:
            result = run.result(timeout=RUN_SECONDS)
    return result


def wait_for(condition, run: concurrent.futures.Future, event: str):
    """Poll ``condition()`` until it returns a truthy value, and fail when the run ends first."""
    deadline = time.monotonic() + FAULT_WAIT_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if run.done():
            pytest.fail(f"the run ended before {event}: {run.result().summary()}")
        time.sleep(0.2)
    pytest.fail(f"{event} did not happen within {FAULT_WAIT_SECONDS} s")


def kill_dind_during_build(client, run) -> None:
    def building_service():
        filters = {"label": [f"{labels.SESSION}={labels.session_id()}", f"{labels.PREFIX}.role=service"],
                   "status": "running"}
        for container in client.containers.list(sparse=True, filters=filters):
            try:
                processes = container.top()["Processes"] or []
            except docker.errors.APIError:
                continue
            if any("sleep 120" in " ".join(process) for process in processes):
                return container
        return None

    service = wait_for(building_service, run, "the build step started inside the dind service")
    service.kill()


def stop_registry_during_push(client, run) -> None:
    def pushing_registry():
        filters = {"label": [f"{labels.SESSION}={labels.session_id()}", f"{labels.PREFIX}.registry-role=registry"]}
        for container in client.containers.list(sparse=True, filters=filters):
            if "POST /v2/group/large/blobs/uploads/" in container.logs(tail=50).decode(errors="replace"):
                return container
        return None

    registry = wait_for(pushing_registry, run, "the push to the registry started")
    registry.stop(timeout=1)


@pytest.mark.engine
@pytest.mark.images
@pytest.mark.registry
@pytest.mark.dind
@pytest.mark.slow
def test_dind_killed_mid_build(engine_client, faults_scenario) -> None:
    shared_mirror(engine_client)
    before = session_resources(engine_client)

    result = run_with_fault(engine_client, faults_scenario, "BuildSlowly", kill_dind_during_build)

    job = result.job("BuildSlowly")
    fault = f"service {DIND} (alias docker) exited during the job with exit code 137"
    assert job.status == "failed", job.trace
    assert "fault-marker" in job.trace
    assert fault in job.reason
    assert fault in result.summary()
    assert f"ERROR: Job failed: exit code 1, because the {fault}" in job.trace
    assert job.details["fault"].startswith(fault)
    assert leftovers(engine_client, before, result) == set()

    after = run_scenario(engine_client, faults_scenario, "dind", RunOptions(jobs=("PushSmall",)))

    assert after.job("PushSmall").status == "success", after.job("PushSmall").trace
    assert leftovers(engine_client, before, result, after) == set()


@pytest.mark.engine
@pytest.mark.images
@pytest.mark.registry
@pytest.mark.dind
@pytest.mark.slow
def test_registry_stopped_mid_push(engine_client, faults_scenario) -> None:
    shared_mirror(engine_client)
    before = session_resources(engine_client)

    result = run_with_fault(engine_client, faults_scenario, "PushLarge", stop_registry_during_push)

    job = result.job("PushLarge")
    assert job.status == "failed", job.trace
    assert job.exit_code in (1, 124), job.trace
    assert f"the registry {REGISTRY_HOST} (" in job.reason
    assert ") stopped during the job with exit code " in job.reason
    assert job.reason in result.summary()
    assert result.registry_tags == {}
    assert leftovers(engine_client, before, result) == set()

    after = run_scenario(engine_client, faults_scenario, "dind", RunOptions(jobs=("PushSmall",)))

    assert after.job("PushSmall").status == "success", after.job("PushSmall").trace
    assert after.registry_tags == {"group/small": ["1"]}
    assert leftovers(engine_client, before, result, after) == set()
