"""The sandbox host engine: DooD jobs change only the sandbox, and stopping it leaves nothing behind.

The seed's DooD job runs ``docker rm -f nodedemo`` and leaves a ``--restart=always`` container
called ``nodedemo`` behind. A container of that name on the real engine is the sentinel: on a
local host the job would remove it.
"""

from __future__ import annotations

import logging
import threading
import time

import docker.errors
import pytest

from harness import cli, host, labels, locks, run
from harness.engine import local_dns_address, offline_guard_enabled
from harness.errors import EngineError
from harness.sandbox import SandboxEngine, sandboxes_dir
from harness.scenario import load_scenario

from worker_groups import SEED_RUNS

pytestmark = [pytest.mark.engine, pytest.mark.dood]


@pytest.fixture
def sandbox_host(host_engine):
    if host_engine.sandbox is None:
        pytest.skip("runs only with --host-engine=sandbox")
    return host_engine


SEED_IMAGE = "registry.cn-beijing.aliyuncs.com/devopsman/marionxue-ops:nodedemo"
# Held while the real engine has, or must not get, the seed's container and image names.
REAL_ENGINE_SEED_LOCK = "real-engine-seed-names"


@pytest.fixture
def sentinel(engine_client):
    """A running ``nodedemo`` container and a ``SEED_IMAGE`` tag of busybox on the real engine.

    Both are what the seed's DooD job replaces on its host, so both change if the job reaches
    the real engine. Other sessions may change other resources on the engine at the same time,
    so the test watches only these. The seed's pipeline fixes both names, so a machine-wide lock
    keeps other workers and sessions from creating them meanwhile.
    """
    with locks.machine_lock(REAL_ENGINE_SEED_LOCK):
        container = engine_client.containers.run(
            "busybox:latest", ["sleep", "3600"], name="nodedemo", detach=True,
            labels=labels.managed_labels("test-sentinel"))
        image = engine_client.images.get("busybox:latest")
        image.tag(SEED_IMAGE)
        yield container, image.id
        container.remove(force=True)
        engine_client.images.remove(SEED_IMAGE)


def test_dood_run_spares_real_engine(engine_client, sandbox_host, sentinel):
    container, image_id = sentinel

    result = run.run_scenario(engine_client, load_scenario("seed"), "dood", run.RunOptions(host=sandbox_host))

    assert result.succeeded, result.summary()
    # Catches a DooD job reaching the real engine: its `docker rm -f nodedemo` replaces the sentinel.
    container.reload()
    assert container.status == "running"
    assert engine_client.containers.get("nodedemo").id == container.id
    # Catches the job's `docker build -t SEED_IMAGE` (or the teardown) moving the real engine's tag.
    assert engine_client.images.get(SEED_IMAGE).id == image_id
    # The job's own container and image were on the sandbox, the run's host.
    result.placement.container("nodedemo").running_on("host")
    result.placement.image(SEED_IMAGE).only_in("host")


@SEED_RUNS
def test_result_names_sandbox_host(engine_client, sandbox_host, scenario_runs):
    result = scenario_runs("seed", "dood")

    assert result.host == f"sandbox {sandbox_host.sandbox.name}"
    assert f"host: {result.host}" in cli._report(result, show_traces=False)


def test_stop_removes_jobs_leftovers(engine_client, sandbox_host):
    sandbox = (SandboxEngine(engine_client).with_network(sandbox_host.network)
               .with_mirror(sandbox_host.sandbox.mirror).start())
    try:
        sandbox.seed(["busybox:latest"])
        sandbox.client.containers.run("busybox:latest", ["sleep", "3600"], name="left-behind", detach=True,
                                      restart_policy={"Name": "always"})
        volume_name = sandbox.volume.name
    finally:
        sandbox.stop()

    # Catches a stop that leaves the sandbox container, its data volume or its socket directory.
    with pytest.raises(docker.errors.NotFound):
        engine_client.containers.get(sandbox.name)
    with pytest.raises(docker.errors.NotFound):
        engine_client.volumes.get(volume_name)
    assert not (sandboxes_dir() / sandbox.name).exists()
    # The job's container lived in the sandbox only.
    assert not engine_client.api.containers(all=True, filters={"name": "^/left-behind$"})


def test_nested_lookups_stay_local(sandbox_host):
    if not offline_guard_enabled():
        pytest.skip("HARNESS_ALLOW_PULLS lets containers use outside name servers")
    sandbox_host.sandbox.seed(["busybox:latest"])

    output = sandbox_host.client.containers.run("busybox:latest", ["cat", "/etc/resolv.conf"], remove=True)

    nameservers = [line.split()[1] for line in output.decode().splitlines() if line.startswith("nameserver")]
    # Catches a sandbox daemon that hands its containers the fallback name servers 8.8.8.8 and
    # 8.8.4.4, because its own resolv.conf names only Docker's embedded DNS on 127.0.0.11.
    assert nameservers == [local_dns_address()]


def test_seed_loads_images_once(engine_client, sandbox_host):
    sandbox = (SandboxEngine(engine_client).with_network(sandbox_host.network)
               .with_mirror(sandbox_host.sandbox.mirror).start())
    try:
        loaded = sandbox.seed(["busybox:latest", "alpine:3", "busybox:latest"])
        again = sandbox.seed(["alpine:3"])
        with pytest.raises(EngineError, match="no-such-image:none.*harness images build"):
            sandbox.seed(["alpine:3", "dind-dood-harness/no-such-image:none"])
        tags = {tag for image in sandbox.client.images.list() for tag in image.tags}
        release = sandbox.client.containers.run("alpine:3", ["cat", "/etc/alpine-release"], remove=True)
    finally:
        sandbox.stop()

    # Catches a reference loaded twice, or an image present already being loaded again.
    assert loaded == ["busybox:latest", "alpine:3"]
    assert again == []
    # Catches a save by image id, which would load the images without their tags.
    assert tags == {"busybox:latest", "alpine:3"}
    assert release.strip()


def test_missing_image_leaves_nothing(engine_client):
    sandbox = SandboxEngine(engine_client, image="dind-dood-harness/no-such-image:none")

    with pytest.raises(EngineError, match="no-such-image:none for the sandbox engine not found"):
        sandbox.start()

    assert not engine_client.api.containers(all=True, filters={"name": sandbox.name})
    assert not engine_client.volumes.list(filters={"name": sandbox.name})
    assert not (sandboxes_dir() / sandbox.name).exists()


def test_local_host_warns(engine_client, caplog):
    with caplog.at_level(logging.WARNING, logger="harness.cli"):
        chosen = cli._open_host(engine_client, "local")

    assert chosen.kind == "local"
    assert chosen.client is engine_client
    assert host.LOCAL_WARNING in caplog.text


@SEED_RUNS
def test_engine_stop_mid_job_fails_job(engine_client, sandbox_host, scenario_runs):
    doomed = sandbox_host.another_sandbox()
    try:
        killer = threading.Thread(target=_kill_when_build_container_runs, args=(doomed,), daemon=True)
        killer.start()
        result = run.run_scenario(engine_client, load_scenario("seed"), "dood", run.RunOptions(host=doomed))
        killer.join(timeout=60)
    finally:
        doomed.close()

    # Catches a run that crashes, hangs or reports success when its host engine dies mid-job.
    build = result.job("BuildImages")
    assert build.status == "failed"
    assert f"the host engine ({doomed.description}) stopped responding during the job" in build.reason
    assert result.job("TestImage").status == "skipped"
    # Catches a teardown that stops at the dead engine and leaves the run's registry behind.
    assert not engine_client.api.containers(all=True, filters={"label": f"{labels.SESSION}={labels.session_id()}",
                                                                "name": "-registry-"})
    # The harness still runs jobs afterwards, on the session's own sandbox.
    assert scenario_runs("seed", "dood").succeeded


def _kill_when_build_container_runs(doomed: host.HostEngine) -> None:
    """Kill the sandbox container once a job's build container exists in it."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        summaries = doomed.client.api.containers(filters={"name": "-build"})
        if any(summary["Names"][0].endswith("-build") for summary in summaries):
            doomed.real_client.api.kill(doomed.sandbox.container.id)
            return
        time.sleep(0.2)
