"""Kubernetes pod shapes on the engine: the pod runner, the seed's DooD and DinD pods, and D20.

The back-off is scaled to a tenth (1 s, 2 s, 4 s ...) through ``backoff_scale=0.1``, so restarts
happen within the suite's time budget. The kubelet's timing is ``backoff_scale=1.0``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import http.client
import urllib.request
from pathlib import Path

import docker.errors
import pytest

from harness import labels, locks
from harness.errors import InputError
from harness.kubernetes import Pod
from harness.kubernetes_node import probe_docker_socket
from harness.kubernetes_run import PodRun
from harness.kubernetes_spec import load_pod, parse_pod

from worker_groups import KUBERNETES_PODS

pytestmark = [pytest.mark.k8s, KUBERNETES_PODS]

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
BACKOFF_SCALE = 0.1
# bash's /dev/tcp, because the docker CLI stand-in has neither wget nor curl.
HTTP_GET_LOCALHOST = "exec 3<>/dev/tcp/127.0.0.1/80; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
# The d20 pod's hostPath is one fixed directory under /tmp, which every sandbox node shares with
# the real host; each run creates and removes it.
D20_HOST_PATH_LOCK = "node-path-k8s-d20"


def _pod(containers: list[dict], **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unit"},
            "spec": {"containers": containers, "terminationGracePeriodSeconds": 2, **spec}}


def _busybox(name: str, script: str, **fields: object) -> dict:
    return {"name": name, "image": "busybox:latest", "command": ["sh", "-c", script], **fields}


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _node_serves_httpd(address: str) -> bool:
    # docker-proxy accepts on the node's port before httpd listens in the container, and then
    # resets the connection. Only a full response shows that the DooD container serves the page.
    try:
        with urllib.request.urlopen(f"http://{address}:80/", timeout=5) as response:
            return "It works!" in response.read().decode()
    except (OSError, http.client.HTTPException):
        return False


def _pod_resources(client, pod_name: str) -> tuple[list, list]:
    label = f"{labels.PREFIX}.pod={pod_name}"
    return (client.containers.list(all=True, filters={"label": label}),
            client.volumes.list(filters={"label": label}))


def _httpd_answers(pod: Pod) -> bool:
    if pod.statuses["docker-cmds"].state != "running":
        return False
    try:
        code, output = pod.exec("docker-cmds", ["bash", "-c", HTTP_GET_LOCALHOST])
    except docker.errors.APIError:
        return False
    return code == 0 and "It works!" in output


# Parsing: pure units on manifests.

def test_unsupported_field_names_path():
    document = _pod([_busybox("a", "true"), {**_busybox("b", "true"), "lifecycle": {}}])
    # Catches a manifest run with part of it silently dropped.
    with pytest.raises(InputError) as raised:
        parse_pod(document, "pod.yaml")
    assert raised.value.key == "spec.containers[1].lifecycle"
    assert "unsupported field" in raised.value.problem
    assert str(raised.value).startswith("pod.yaml: spec.containers[1].lifecycle: ")


def test_unknown_volume_and_bad_quantity():
    mounts = _pod([{**_busybox("a", "true"), "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}])
    with pytest.raises(InputError) as raised:
        parse_pod(mounts)
    assert raised.value.key == "spec.containers[0].volumeMounts[0].name"

    quantity = _pod([{**_busybox("a", "true"), "resources": {"limits": {"memory": "lots"}}}])
    with pytest.raises(InputError) as raised:
        parse_pod(quantity)
    assert raised.value.key == "spec.containers[0].resources.limits.memory"


def test_seed_pods_parse():
    dind = load_pod(SCENARIOS / "k8s-dind" / "pod.yaml")
    assert [c.name for c in dind.containers] == ["docker-cmds", "dind-daemon"]
    assert dind.containers[1].privileged
    assert dind.containers[0].resources.cpu_request == 10
    assert dind.containers[0].resources.memory_request == 256 * 2**20
    assert dind.volumes[0].kind == "emptyDir"


# The pod runner on the engine.

@pytest.mark.engine
def test_pod_shares_localhost_and_aliases(engine_client):
    document = _pod(
        [_busybox("server", "httpd -f -p 8080 -h /tmp"),
         {**_busybox("client", "sleep 60"), "resources": {"limits": {"cpu": "500m", "memory": "64Mi"},
                                                          "requests": {"cpu": "250m"}}}],
        hostAliases=[{"ip": "127.0.0.1", "hostnames": ["server-alias"]}])
    with Pod(engine_client, parse_pod(document), BACKOFF_SCALE) as pod:
        pod.wait_for(lambda: all(s.state == "running" for s in pod.statuses.values()), 20, "both running")
        time.sleep(1)
        # Catches containers that do not share the pause container's network namespace.
        code, output = pod.exec("client", ["wget", "-q", "-S", "-O", "/dev/null", "http://localhost:8080/"])
        assert "404" in output or code == 0, output
        # Catches hostAliases not written to the /etc/hosts every container shares.
        code, hosts = pod.exec("client", ["cat", "/etc/hosts"])
        assert "server-alias" in hosts

        host_config = pod.container("client").attrs["HostConfig"]
        assert host_config["NanoCpus"] == 500_000_000
        assert host_config["Memory"] == 64 * 2**20
        assert host_config["CpuShares"] == 256
        assert host_config["NetworkMode"] == f"container:{pod.pause.id}"
        assert host_config["IpcMode"] == f"container:{pod.pause.id}"


@pytest.mark.engine
def test_restart_policies_and_backoff(engine_client):
    document = _pod([_busybox("crash", "exit 3")])
    with Pod(engine_client, parse_pod(document), BACKOFF_SCALE) as pod:
        started = time.monotonic()
        pod.wait_for(lambda: pod.statuses["crash"].restarts >= 2, 15, "two restarts")
        elapsed = time.monotonic() - started
        # Back-off 1 s then 2 s: two restarts cannot come faster than 3 s; catches a missing back-off.
        assert elapsed >= 3.0 - 0.5, elapsed
        assert set(pod.statuses["crash"].exit_codes) == {3}

    for policy, script, restarts in (("Never", "exit 3", 0), ("OnFailure", "exit 0", 0)):
        with Pod(engine_client, parse_pod(_pod([_busybox("once", script)], restartPolicy=policy)),
                 BACKOFF_SCALE) as pod:
            pod.wait_for(lambda: pod.statuses["once"].state == "terminated", 10, f"{policy} stops")
            time.sleep(1.5)
            # Catches a restart that the policy forbids.
            assert pod.statuses["once"].restarts == restarts


@pytest.mark.engine
def test_pod_removed_on_failure(engine_client, tmp_path):
    document = _pod([{**_busybox("a", "sleep 60"), "volumeMounts": [{"name": "scratch", "mountPath": "/s"}]}],
                    volumes=[{"name": "scratch", "emptyDir": {}}])
    spec = parse_pod(document)
    with pytest.raises(RuntimeError):
        with Pod(engine_client, spec) as pod:
            assert _pod_resources(engine_client, "unit")[1], "emptyDir volume was not created"
            raise RuntimeError("test body failed")
    containers, volumes = _pod_resources(engine_client, "unit")
    # Catches containers, the pause container or emptyDir volumes left behind by a failing test.
    assert [c.name for c in containers if labels.session_id() in c.name] == []
    assert [v.name for v in volumes if labels.session_id() in v.name] == []
    assert pod.pause is not None


def test_host_path_type_checked(engine_client, tmp_path):
    document = _pod([{**_busybox("a", "true"), "volumeMounts": [{"name": "sock", "mountPath": "/s"}]}],
                    volumes=[{"name": "sock", "hostPath": {"path": str(tmp_path), "type": "Socket"}}])
    with pytest.raises(InputError) as raised:
        with Pod(engine_client, parse_pod(document, "pod.yaml")):
            pass
    # Catches a pod started although the kubelet would refuse its hostPath.
    assert raised.value.key == "spec.volumes[0].hostPath"
    assert "is not a socket" in raised.value.problem


# The seed's pods.

@pytest.fixture(scope="module")
def dind_pod(engine_client, host_engine):
    """Run the seed's DinD pod until httpd answers inside it; yield facts read before and after deletion."""
    spec = load_pod(SCENARIOS / "k8s-dind" / "pod.yaml")
    facts = {}
    with PodRun(engine_client, spec, BACKOFF_SCALE, host=host_engine) as run:
        run.pod.wait_for(lambda: _httpd_answers(run.pod), 90, "httpd answering in the pod")
        facts["from_docker_cmds"] = run.pod.exec("docker-cmds", ["bash", "-c", HTTP_GET_LOCALHOST])
        facts["node_port_80"] = _port_open(run.node.address, 80)
        facts["pod_ids"] = [status.id for status in run.pod.statuses.values()] + [run.pod.pause.id]
        facts["volumes"] = list(run.pod._volumes.values())
        run.observe()
        facts["before_delete"] = run.result()
    facts["after_delete"] = run.result()
    return facts


@pytest.mark.engine
def test_dind_pod_race_counted(dind_pod):
    result = dind_pod["before_delete"]
    # docker-cmds starts first and its docker run fails while the sidecar's dockerd is still starting;
    # catches a race hidden by a sleep or by a runner that waits for the sidecar.
    assert result.restarts("docker-cmds") >= 1, result.render()
    exits = next(row["exit_codes"] for row in result.containers if row["name"] == "docker-cmds")
    assert exits and all(code != 0 for code in exits), result.render()
    assert result.restarts("dind-daemon") == 0, result.render()


@pytest.mark.engine
def test_dind_pod_placement(dind_pod):
    placement = dind_pod["before_delete"].placement
    # Catches a DOCKER_HOST that reached the node's engine instead of the sidecar.
    placement.image("httpd:latest").in_daemon("dind:dind-daemon")
    httpd = [c for c in placement.final("dind:dind-daemon").containers if c.image == "httpd:latest"]
    assert httpd and httpd[0].state == "running", placement.table()
    node_httpd = [c for c in placement.final("host").containers if c.image == "httpd:latest"
                  and c.labels.get(labels.SESSION) is None and c.id in dind_pod["pod_ids"]]
    assert node_httpd == []


@pytest.mark.engine
def test_dind_pod_port_80_stays_in_pod(dind_pod):
    code, output = dind_pod["from_docker_cmds"]
    # Catches containers not sharing the pod's network namespace with the sidecar.
    assert code == 0 and "It works!" in output, output
    # Catches a port published on the node instead of inside the sidecar's namespace.
    assert dind_pod["node_port_80"] is False


@pytest.mark.engine
def test_dind_pod_gone_with_pod(dind_pod, host_engine):
    for container_id in dind_pod["pod_ids"]:
        with pytest.raises(docker.errors.NotFound):
            host_engine.client.containers.get(container_id)
    # Catches an emptyDir graph storage (and the sidecar's images) that outlives the pod.
    for volume in dind_pod["volumes"]:
        with pytest.raises(docker.errors.NotFound):
            host_engine.client.volumes.get(volume)
    assert dind_pod["after_delete"].node_leftovers == []


@pytest.mark.engine
def test_dood_pod_lands_on_node(engine_client, host_engine):
    spec = load_pod(SCENARIOS / "k8s-dood" / "pod.yaml")
    with PodRun(engine_client, spec, BACKOFF_SCALE, host=host_engine) as run:
        assert [probe.docker_api for probe in run.socket_probes] == [True]
        address = run.node.address
        # Catches a client that did not reach the node's engine through the hostPath socket:
        # wait_for raises when the node's port 80 never serves httpd's page.
        run.pod.wait_for(lambda: _node_serves_httpd(address), 60, "httpd served on the node's port 80")
        run.observe()
        node_ids = {status.id for status in run.pod.statuses.values()}
        node_ids |= {c.id for c in run.snapshots[-1].containers if c.image == "httpd:latest"}
        # The summaries only: inspecting each container races with other sessions' removals.
        real_ids = {summary["Id"] for summary in engine_client.api.containers(all=True)}
    result = run.result()

    if host_engine.sandbox is not None:
        # Catches a pod whose containers or DooD socket reached the real engine: the pod, and the
        # httpd container its docker client created, exist only on the sandbox.
        assert address != "127.0.0.1"
        assert node_ids - {""}, result.render()
        assert not real_ids & node_ids, result.render()

    result.placement.image("httpd:latest").not_in("dind")
    # Catches a DooD container removed with the pod: the node's engine owns it.
    after = result.placement.final("host")
    assert after.when == "after the pod was deleted"
    survivors = [c for c in after.containers if c.image == "httpd:latest"
                 and c.id in {leftover.id for leftover in result.node_leftovers}]
    assert survivors, result.render()
    # The attached docker client forwards the kubelet's SIGTERM to httpd (sig-proxy), so the
    # container survives stopped; catches a pod deletion that reached into the node's engine.
    assert survivors[0].state in ("running", "exited"), survivors
    assert result.restarts("docker-cmds") == 0, result.render()
    # The harness removes the survivor at teardown; it must be gone now.
    for leftover in result.node_leftovers:
        with pytest.raises(docker.errors.NotFound):
            host_engine.client.containers.get(leftover.id)


@pytest.mark.engine
def test_d20_node_without_docker_api(engine_client, host_engine):
    spec = load_pod(SCENARIOS / "k8s-d20-no-docker-socket" / "pod.yaml")
    with locks.machine_lock(D20_HOST_PATH_LOCK):
        with PodRun(engine_client, spec, BACKOFF_SCALE, host=host_engine) as run:
            run.pod.wait_for(lambda: run.pod.statuses["docker-cmds"].restarts >= 1, 20, "a restart")
            logs = run.pod.logs("docker-cmds")
        host_path_kind = run.node.path_kind("/tmp/dind-dood-harness-k8s-d20/var/run")
    [probe] = run.socket_probes
    # Catches a probe that lets the DooD pod run against a node without dockerd unannounced.
    assert probe.docker_api is False
    assert "the node has no Docker API at /tmp/dind-dood-harness-k8s-d20/var/run/docker.sock" in probe.describe()
    assert "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" in logs
    # Catches a DirectoryOrCreate path the pod created but left on the node.
    assert host_path_kind == "missing"


def test_probe_on_non_docker_socket(tmp_path):
    path = tmp_path / "containerd.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        ok, reason = probe_docker_socket(str(path), timeout=1)
    finally:
        server.close()
    # Catches a probe that takes any listening socket for the Docker API.
    assert ok is False
    assert "no Docker reply" in reason or "failed" in reason


@pytest.fixture
def d20_host_path():
    """Hold the d20 pod's node directory; request it before ``run_pod`` so it outlives the pod."""
    with locks.machine_lock(D20_HOST_PATH_LOCK):
        yield


@pytest.mark.engine
def test_run_pod_fixture_starts_manifest(d20_host_path, run_pod):
    run = run_pod(SCENARIOS / "k8s-d20-no-docker-socket" / "pod.yaml", backoff_scale=BACKOFF_SCALE)
    # Catches a fixture that hands back a pod that is not started.
    assert run.pod.statuses["docker-cmds"].id
    assert [probe.docker_api for probe in run.socket_probes] == [False]


@pytest.mark.engine
def test_cli_pod_run_prints_restarts(engine_client):
    # A separate process with its own session id, because the command removes its session's
    # resources when it exits. It starts its own sandbox and mirror, which took 75 s on a shared
    # 2-core machine; the timeout leaves room for a busier engine.
    environment = {**os.environ, "HARNESS_SESSION_ID": secrets.token_hex(4)}
    manifest = SCENARIOS / "k8s-d20-no-docker-socket" / "pod.yaml"
    with locks.machine_lock(D20_HOST_PATH_LOCK):
        process = subprocess.run([sys.executable, "-m", "harness.cli", "pod", "run", str(manifest), "--seconds", "4",
                                  "--backoff-scale", str(BACKOFF_SCALE)],
                                 env=environment, capture_output=True, text=True, timeout=300)
    # Catches a command that hides the crash loop or reports a node without Docker API as healthy.
    assert process.returncode == 1, process.stderr
    assert "RESTARTS" in process.stdout
    assert "docker-cmds" in process.stdout
    assert "the node has no Docker API" in process.stdout
    assert "placement (k8s):" in process.stdout


def test_pod_alias_bomb_rejected(tmp_path):
    levels = ['a0: &a0 ["x"]'] + [f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]"
                                  for level in range(1, 10)]
    manifest = tmp_path / "pod.yaml"
    manifest.write_text("\n".join(levels) + "\nspec: {containers: *a8}\n")

    with pytest.raises(InputError) as raised:
        load_pod(manifest)

    # Catches a reader that walks the expanded aliases, which would not finish.
    assert "expands to more than" in str(raised.value)
