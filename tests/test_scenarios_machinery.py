"""Scenarios whose outcome needs more than ``scenario.toml`` can state.

Each test runs a bundled scenario for real through ``harness.run`` and adds what the folder format
cannot express: a host directory the test prepares, the engine's volume events, jobs that run at
the same time, two harness sessions on one engine, and a server the test runs on the job's
network. A comment above each assertion names the mistake it catches.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import docker
import pytest

from harness import cleanup, labels, locks
from harness.placement import HOST
from harness.run import RunOptions, RunResult, run_scenario
from harness.scenario import load_scenario
from harness.variables import Variable

from worker_groups import D10_REAL_ENGINE, D14_RUNS

pytestmark = [pytest.mark.engine, pytest.mark.slow]

# The dind image declares this directory a VOLUME, so each service gets an anonymous host volume.
DIND_DATA_ROOT = "/var/lib/docker"


def _run(client, folder: str, mode: str, **variables: str) -> RunResult:
    """Run a bundled scenario in ``mode`` with extra project variables; return its result."""
    options = RunOptions(variables=[Variable(key, value, masked=False, public=False)
                                    for key, value in variables.items()])
    return run_scenario(client, load_scenario(folder), mode, options)


def _host_snapshot(result: RunResult, when: str):
    matching = [s for s in result.placement.snapshots if s.daemon == HOST and s.when == when]
    assert matching, f"no host snapshot {when!r}; have {[s.when for s in result.placement.snapshots]}"
    return matching[-1]


# X2: a DooD bind mount acts on the host's own directory.

@pytest.fixture
def tool_dir(tmp_path):
    """A host directory with ``sentinel.txt`` and ``keep.txt``, as a developer's tool directory."""
    directory = tmp_path / "tool"
    directory.mkdir()
    (directory / "sentinel.txt").write_text("original\n")
    (directory / "keep.txt").write_text("keep me\n")
    return directory


@pytest.mark.dood
def test_x2_dood_rewrites_host_directory(engine_client, tool_dir):
    result = _run(engine_client, "x2-dood-bind-mutates-host", "dood", SENTINEL_DIR=str(tool_dir))
    job = result.job("PrepareToolDir")

    assert job.status == "success", job.trace
    # Catches a DooD job whose bind is resolved in the job container instead of on the host.
    assert "keep.txt" in job.trace.splitlines(), "the inner container did not list the host's files"
    assert (tool_dir / "sentinel.txt").read_text() == "rewritten by the job\n"
    assert not (tool_dir / "keep.txt").exists(), "the DooD job did not delete the host's keep.txt"


@pytest.mark.dind
def test_x2_dind_leaves_host_directory(engine_client, tool_dir):
    result = _run(engine_client, "x2-dood-bind-mutates-host", "dind", SENTINEL_DIR=str(tool_dir))
    job = result.job("PrepareToolDir")

    assert job.status == "success", job.trace
    # Catches a dind service that shares the host's filesystem (a socket or path leaking into it).
    assert (tool_dir / "sentinel.txt").read_text() == "original\n"
    assert (tool_dir / "keep.txt").read_text() == "keep me\n"
    assert "keep.txt" not in job.trace.splitlines(), "the inner container listed the host's files"


# D15: host growth per run.

@contextmanager
def _volume_events(client) -> Iterator[list[dict]]:
    """Collect the engine's volume events while the block runs."""
    collected: list[dict] = []
    stream = client.events(filters={"type": "volume"}, decode=True)

    def read() -> None:
        try:
            for event in stream:
                collected.append(event)
        except Exception:  # the stream raises when close() cuts the connection
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield collected
    finally:
        stream.close()
        reader.join(timeout=10)


def _data_root_volumes(events: list[dict], service_ids: set[str]) -> set[str]:
    """Return the volumes mounted at /var/lib/docker in one of ``service_ids``."""
    return {event["Actor"]["ID"] for event in events
            if event.get("Action") == "mount"
            and event["Actor"]["Attributes"].get("container") in service_ids
            and event["Actor"]["Attributes"].get("destination") == DIND_DATA_ROOT}


def _growth_tags(snapshot, repository: str) -> list[str]:
    return sorted(tag for tag in snapshot.images if tag.startswith(f"{repository}:"))


@pytest.mark.dood
def test_d15_dood_host_grows_per_build(engine_client):
    repository = f"d15-growth-{labels.session_id()}"
    result = _run(engine_client, "d15-host-growth-per-run", "dood", GROWTH_REPOSITORY=repository)

    assert [job.status for job in result.jobs] == ["success", "success"], result.summary()
    # Catches a DooD build that does not reach the host engine's image store (one image per run).
    assert _growth_tags(result.placement.baseline, repository) == []
    assert _growth_tags(_host_snapshot(result, "after BuildFirst"), repository) == [f"{repository}:first"]
    assert _growth_tags(_host_snapshot(result, "after BuildSecond"), repository) == \
        [f"{repository}:first", f"{repository}:second"]


@pytest.mark.dind
def test_d15_dind_host_keeps_nothing(engine_client):
    repository = f"d15-growth-{labels.session_id()}"
    with _volume_events(engine_client) as events:
        result = _run(engine_client, "d15-host-growth-per-run", "dind", GROWTH_REPOSITORY=repository)

    assert [job.status for job in result.jobs] == ["success", "success"], result.summary()
    for job in result.jobs:
        service_ids = {service["container_id"] for service in job.details.get("services", [])}
        after = _host_snapshot(result, f"after {job.name}")
        anonymous = _data_root_volumes(events, service_ids)

        # Catches a dind service without its /var/lib/docker VOLUME; the next checks need one.
        assert len(anonymous) == 1, f"{job.name}: /var/lib/docker mounts of its service: {anonymous}"
        # Catches a cleanup that removes the service container without its volumes (no v=True).
        assert not anonymous & set(after.volumes), f"{job.name} left {anonymous} on the host engine"
        # Catches a build that reached the host engine instead of the service's daemon.
        assert _growth_tags(after, repository) == [], f"{job.name} left images on the host engine"
        inner = [s for s in result.placement.snapshots if s.daemon == f"dind:{job.name}"]
        assert inner and _growth_tags(inner[-1], repository), f"{job.name}: image missing in its dind daemon"


# D14: two jobs of one project at the same time.

def _concurrent_ids(result: RunResult) -> list[int]:
    """Return the CI_CONCURRENT_ID each job printed, in job order."""
    ids = []
    for job in result.jobs:
        lines = [line for line in job.trace.splitlines() if line.startswith("concurrent id ")]
        assert lines, f"{job.name} printed no concurrent id:\n{job.trace}"
        ids.append(int(lines[-1].split()[-1]))
    return ids


def _span(trace: str) -> tuple[int, int]:
    """Return the first and last section timestamps of a trace (epoch seconds)."""
    stamps = [int(match) for match in re.findall(r"section_(?:start|end):(\d+):", trace)]
    assert stamps, "the trace has no sections"
    return min(stamps), max(stamps)


def _assert_jobs_overlapped(result: RunResult) -> None:
    first, second = (_span(job.trace) for job in result.jobs)
    # Catches a harness that ignores concurrent = 2 and runs the stage's jobs one after another.
    assert first[0] < second[1], f"job spans {first} and {second} do not overlap"
    assert second[0] < first[1], f"job spans {first} and {second} do not overlap"
    assert sorted(_concurrent_ids(result)) == [0, 1]
    for job, slot in zip(result.jobs, _concurrent_ids(result)):
        names = [container["name"] for container in job.details.get("containers", [])]
        assert names and all(f"-concurrent-{slot}-" in name for name in names), names


@pytest.mark.dood
@D14_RUNS
def test_d14_dood_jobs_interfere(run_scenario):
    result = run_scenario("d14-concurrent-jobs-same-project", "dood")

    _assert_jobs_overlapped(result)
    # Catches DooD jobs that do not share the host engine: JobB's docker rm -f must hit JobA.
    assert result.job("JobA").status == "failed", result.job("JobA").trace
    assert "container d14-app was replaced (owner now: JobB)" in result.job("JobA").trace
    assert result.job("JobB").status == "success", result.job("JobB").trace


@pytest.mark.dind
@D14_RUNS
def test_d14_dind_jobs_isolated(run_scenario):
    result = run_scenario("d14-concurrent-jobs-same-project", "dind")

    _assert_jobs_overlapped(result)
    # Catches dind services that share one daemon, or a DOCKER_HOST that reaches the host engine.
    for job in result.jobs:
        assert job.status == "success", job.trace
        assert "container d14-app stayed mine" in job.trace


# X1: two harness sessions against one engine.

_SESSION_SCRIPT = """
import json, docker
from harness.run import run_scenario
from harness.scenario import load_scenario
result = run_scenario(docker.from_env(), load_scenario("x1-two-sessions-one-engine"), "dind")
job = result.job("BuildAndRun")
print(json.dumps({"status": job.status, "trace": job.trace,
                  "containers": [c["name"] for c in job.details.get("containers", [])],
                  "networks": [n["name"] for n in job.details.get("networks", [])]}))
"""


def _start_session(session: str) -> subprocess.Popen:
    environment = {**os.environ, "HARNESS_SESSION_ID": session}
    environment.pop("HARNESS_OWNER_PID", None)
    return subprocess.Popen([sys.executable, "-c", _SESSION_SCRIPT], env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.dind
def test_x1_two_sessions_never_collide():
    sessions = [secrets.token_hex(4), secrets.token_hex(4)]
    processes = [_start_session(session) for session in sessions]
    try:
        outputs = [process.communicate(timeout=600) for process in processes]
    finally:
        # The library call keeps the runner's cache volumes, as GitLab Runner does; the sessions
        # are over, so their volumes go.
        for session in sessions:
            cleanup.clean(docker.from_env(), session=session)

    results = []
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    for result in results:
        # Catches a name collision between sessions: a conflict fails the job's prepare stage.
        assert result["status"] == "success", result["trace"][-3000:]
        assert "x1-app built" in result["trace"]
    first, second = results
    assert first["networks"] and second["networks"], "the per-build network was not created"
    # Catches per-build network names that depend only on the runner token, project and slot.
    assert set(first["networks"]).isdisjoint(second["networks"])
    assert set(first["containers"]).isdisjoint(second["containers"])


# D10: a small-MTU per-build network and a server the test runs on it.

D10_FOLDER = "d10-dind-mtu-per-build-network"
D10_FILE_MIB = 8
NETTOOLS_IMAGE = "dind-dood-harness/nettools:latest"
# Held for a whole D10 run. Both D10 modes run on the real engine and create cache volumes with
# the same names. The server also joins the first per-build network whose name starts with the
# runner's, so two runs at once (two xdist workers) would share volumes and network.
D10_LOCK = "real-engine-d10"


def _start_d10_server(client):
    """Start a busybox httpd on the default bridge, detached. /big is written once it is attached.

    MTU probing stays off, the Linux default, so the server's TCP never shrinks its
    segments after a silent drop and a stall stays a stall.
    """
    return client.containers.run("httpd:latest", detach=True, cap_add=["NET_ADMIN"],
                                 sysctls={"net.ipv4.tcp_mtu_probing": "0"},
                                 labels=labels.managed_labels("d10-server"),
                                 name=f"harness-d10-server-{labels.session_id()}-{secrets.token_hex(3)}")


def _disable_segmentation_offload(client, server) -> None:
    """Turn off TSO and GSO on every interface of ``server``, from a container in its namespace.

    With offload on, the server's TCP hands the veth pair one packet of up to 64 KiB, and a veth
    forwards such a packet whatever the peer's MTU. Offload off, every segment is a frame of the
    server's MTU, which the 1200-byte peer drops, as a link with a smaller MTU does.
    """
    output = client.containers.run(
        NETTOOLS_IMAGE, ["sh", "-c", "for dev in /sys/class/net/eth*; do ethtool -K ${dev##*/} tso off gso off"
                                     " && ethtool -k ${dev##*/} | grep segmentation-offload:; done"],
        network_mode=f"container:{server.id}", cap_add=["NET_ADMIN"], remove=True,
        labels=labels.managed_labels("d10-offload"))
    assert b"generic-segmentation-offload: on" not in output, output.decode()


def _attach_when_network_appears(client, server, stop: threading.Event, state: dict) -> None:
    """Connect ``server`` as ``d10-server`` to this session's d10 per-build network, MTU 1500 inside.

    The server's own interface gets 1500 while the network's ports have 1200, as a server behind
    a smaller-MTU path has. Its full-size frames then never reach the dind service. Stores the
    network's name, or the error that stopped the set-up, in ``state``.
    """
    session_filter = {"label": [f"{labels.SESSION}={labels.session_id()}"]}
    try:
        while not stop.wait(0.5):
            for network in client.networks.list(filters=session_filter):
                if network.name.startswith("runner-d10dindr"):
                    _prepare_d10_server(client, server, network)
                    state["network"] = network.name
                    return
    except Exception as error:  # reported by the test; a thread's exception would only be printed
        state["error"] = repr(error)


def _prepare_d10_server(client, server, network) -> None:
    network.connect(server, aliases=["d10-server"])
    server.exec_run(["sh", "-c", "for dev in /sys/class/net/eth*; do ip link set ${dev##*/} mtu 1500; done"])
    _disable_segmentation_offload(client, server)

    # The job waits for /big, so no transfer can start before MTU and offloads are set.
    server.exec_run(["dd", "if=/dev/zero", "of=/usr/local/apache2/htdocs/big", "bs=1M", f"count={D10_FILE_MIB}"])


def _run_d10(client, mode: str) -> tuple[RunResult, dict]:
    with locks.machine_lock(D10_LOCK):
        return _run_d10_alone(client, mode)


def _run_d10_alone(client, mode: str) -> tuple[RunResult, dict]:
    server = _start_d10_server(client)
    stop, state = threading.Event(), {}
    watcher = threading.Thread(target=_attach_when_network_appears, args=(client, server, stop, state), daemon=True)
    watcher.start()
    try:
        result = _run(client, D10_FOLDER, mode)
    finally:
        stop.set()
        watcher.join(timeout=30)
        server.remove(force=True)
    return result, state


def _received_bytes(trace: str) -> int:
    match = re.search(r"^received (\d+) bytes$", trace, re.MULTILINE)
    assert match, f"the job printed no byte count:\n{trace}"
    return int(match.group(1))


@pytest.mark.dind
@D10_REAL_ENGINE
def test_d10_default_mtu_stalls(engine_client):
    result, state = _run_d10(engine_client, "dind-default-mtu")
    job = result.job("Download")

    assert "error" not in state, f"d10-server set-up failed: {state.get('error')}"
    assert "network" in state, "the per-build network never appeared, so d10-server was not attached"
    # Catches a per-build network whose network_mtu did not reach the service's interface.
    assert "dind service MTU 1200" in job.trace, job.trace
    # Catches a dind daemon that inherits the network's MTU: its containers must keep 1500.
    assert "inner container MTU 1500" in job.trace, job.trace
    # Catches a network that carries 1500-byte frames (network_mtu not applied to the per-build
    # network, or offload left on). The inner container's MSS of 1460 must stall the body.
    assert "transfer stalled" in job.trace, job.trace
    assert _received_bytes(job.trace) < D10_FILE_MIB * 1024 * 1024, job.trace
    assert job.status == "failed", job.trace


@pytest.mark.dind
@D10_REAL_ENGINE
def test_d10_service_mtu_completes(engine_client):
    result, state = _run_d10(engine_client, "dind-mtu-1200")
    job = result.job("Download")

    assert "error" not in state, f"d10-server set-up failed: {state.get('error')}"
    assert "network" in state, "the per-build network never appeared, so d10-server was not attached"
    assert "dind service MTU 1200" in job.trace, job.trace
    # Catches a service command that does not reach dockerd (--mtu lost on the way).
    assert "inner container MTU 1200" in job.trace, job.trace
    # Catches a broken transfer path (server, address, timeout). The 8 MiB and headers must arrive
    # over the same dropping link as in the stalled mode, so the stall there is the MTU's doing.
    assert "transfer complete" in job.trace, job.trace
    assert _received_bytes(job.trace) > D10_FILE_MIB * 1024 * 1024, job.trace
    assert job.status == "success"
