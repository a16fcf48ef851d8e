"""The engine, the runtime wrapper and `harness doctor` on the real machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from harness import engine, labels

WRAPPER = Path(__file__).resolve().parent.parent / "harness" / "data" / "runc-capfilter"
ALL_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def _spec_with_every_capability() -> dict:
    caps = [f"CAP_{name}" for name in engine.CAPABILITIES]
    return {"ociVersion": "1.0.2", "process": {"capabilities": {name: list(caps) for name in ALL_SETS}}}


def _run_wrapper(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HARNESS_REAL_RUNC="/bin/true")
    return subprocess.run(["sh", str(WRAPPER), *args], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_wrapper_strips_only_missing_caps_from_bundle(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_spec_with_every_capability()))

    result = _run_wrapper(tmp_path, "--root", "/run/x", "create", "--bundle", str(tmp_path), "ctr")

    assert result.returncode == 0, result.stderr
    spec = json.loads((tmp_path / "config.json").read_text())
    missing = set(engine.missing_capabilities())
    expected = [f"CAP_{name}" for name in engine.CAPABILITIES if f"CAP_{name}" not in missing]
    for name in ALL_SETS:
        assert spec["process"]["capabilities"][name] == expected


def test_wrapper_filters_exec_process_file(tmp_path):
    process = tmp_path / "process.json"
    process.write_text(json.dumps(_spec_with_every_capability()["process"]))

    result = _run_wrapper(tmp_path, "exec", "--process", str(process), "--detach", "ctr")

    assert result.returncode == 0, result.stderr
    kept = set(json.loads(process.read_text())["capabilities"]["effective"])
    assert not kept & set(engine.missing_capabilities())
    assert "CAP_SYS_ADMIN" in kept


def test_wrapper_leaves_other_commands_alone(tmp_path):
    original = json.dumps(_spec_with_every_capability())
    (tmp_path / "config.json").write_text(original)

    result = _run_wrapper(tmp_path, "state", "ctr")

    assert result.returncode == 0
    assert (tmp_path / "config.json").read_text() == original


def test_missing_capabilities_reads_bounding_set(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapBnd:\t000001fffeffffff\n")

    assert engine.missing_capabilities(str(status)) == ["CAP_SYS_RESOURCE"]


@pytest.mark.engine
def test_privileged_container_keeps_every_available_cap(engine_client):
    container = engine_client.containers.run(
        engine.PROBE_IMAGE, ["/bin/busybox", "sh", "-c", "grep -E 'CapEff|Seccomp:' /proc/self/status; ls /dev"],
        privileged=True, detach=True, labels=labels.managed_labels("test"))
    try:
        container.wait(timeout=30)
        output = container.logs().decode()
    finally:
        container.remove(force=True)

    effective = int(output.split("CapEff:")[1].split()[0], 16)
    granted = {f"CAP_{name}" for bit, name in enumerate(engine.CAPABILITIES) if effective >> bit & 1}
    assert "CAP_SYS_ADMIN" in granted
    assert "CAP_NET_ADMIN" in granted
    assert not granted & set(engine.missing_capabilities())
    # Privileged also means seccomp off and the host's devices, which the wrapper must not change.
    assert "Seccomp:\t0" in output
    assert "loop0" in output or "kmsg" in output


@pytest.mark.engine
def test_probe_reports_privileged_ok(engine_client):
    assert engine.probe_privileged(engine_client).ok


@pytest.mark.engine
def test_status_describes_engine(engine_client):
    status = engine.status(probe=False)

    assert status.running
    assert status.version.startswith("20.10") or status.version
    assert status.storage_driver == "overlay2"
    assert status.cgroup_version in ("1", "2")


def test_doctor_reports_stopped_engine(tmp_path):
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")

    result = subprocess.run([sys.executable, "-m", "harness.cli", "doctor"], env=env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert f"no Docker engine responds at DOCKER_HOST=unix://{tmp_path}/no-engine.sock" in result.stderr
    assert "harness engine up" in result.stderr


def test_require_engine_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")

    with pytest.raises(engine.EngineError, match="harness engine up"):
        engine.require_engine()


def _started_by_harness() -> bool:
    return engine.status(probe=False).started_by_harness and engine.offline_guard_enabled()


@pytest.mark.engine
def test_offline_guard_stops_outside_lookups(engine_client):
    if not _started_by_harness():
        pytest.skip("the offline guard applies only to an engine started by `harness engine up`")

    container = engine_client.containers.run(
        "busybox:latest", ["sh", "-c", "cat /etc/resolv.conf; nslookup registry-1.docker.io; echo exit=$?"],
        detach=True, labels=labels.managed_labels("test"))
    try:
        container.wait(timeout=60)
        output = container.logs().decode()
    finally:
        container.remove(force=True)

    assert f"nameserver {engine.local_dns_address()}" in output
    assert "exit=0" not in output


@pytest.mark.engine
def test_offline_guard_fails_hub_pull_locally(engine_client):
    if not _started_by_harness():
        pytest.skip("the offline guard applies only to an engine started by `harness engine up`")

    with pytest.raises(docker.errors.APIError) as raised:
        engine_client.images.pull("dind-dood-harness-never-published", tag="1")

    assert "127.0.0.1" in str(raised.value)
