"""The nightly matrix: cells over mode x engine line x runner generation, judged on real runs,
printed as a grid and written as JUnit XML with one case per cell."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import docker
import pytest

from harness import labels, matrix, matrix_report
from harness.engine_lines import ENGINE_LINES, engine_line, substitute_image
from harness.errors import InputError
from harness.executor.compat import CURRENT_VERSION
from harness.placement import Placement, Snapshot
from harness.run import JobResult, RunResult
from harness.scenario import load_scenario
from test_bad_input import REPO_ROOT, run_harness

SEED = load_scenario("seed")


def _cell(engine: str = "26.1", mode: str = "dind", runner: str = CURRENT_VERSION) -> matrix.Cell:
    return matrix.Cell("seed", mode, engine_line(engine), runner)


def _run(start: dict | None, status: str = "success") -> RunResult:
    """Return a run with one dind service whose start is ``start`` (DindStart.to_dict() shape)."""
    snapshot = Snapshot("dind:Build", "before removal", images=["app:1"], start=start)
    return RunResult("seed", "dind", [JobResult("Build", "build", status)],
                     Placement("dind", Snapshot("host", "before the pipeline"), [snapshot]))


# Planning, judging and reporting: pure logic on hand-made results.

def test_plan_covers_every_combination():
    cells = matrix.plan(SEED)

    assert len(cells) == len(SEED.modes) * len(ENGINE_LINES) * len(matrix.DEFAULT_RUNNER_VERSIONS)
    assert len({cell.name for cell in cells}) == len(cells)
    assert "seed/dind/26.1/runner-15.11.0" in {cell.name for cell in cells}


def test_plan_narrows_each_axis():
    cells = matrix.plan(SEED, ["dood"], ["28.5", "1.12"], ["18.6.0"])

    assert [cell.name for cell in cells] == ["seed/dood/28.5/runner-18.6.0", "seed/dood/1.12/runner-18.6.0"]


@pytest.mark.parametrize(("modes", "engines", "runners", "key"), [
    (["nope"], None, None, "modes.nope"),
    (None, ["9.9"], None, "9.9"),
    (None, None, ["latest"], "latest"),
])
def test_plan_rejects_unknown_values(modes, engines, runners, key):
    with pytest.raises(InputError) as raised:
        matrix.plan(SEED, modes, engines, runners)

    assert key in str(raised.value)


def test_images_follow_the_engine_line():
    line = engine_line("28.5")

    assert substitute_image("docker:19.03.7-dind", line) == "docker:28.5-dind"
    assert substitute_image("docker:dind", line) == "docker:28.5-dind"
    assert substitute_image("docker:stable", line) == "docker:28.5-cli"
    assert substitute_image("docker", line) == "docker:28.5-cli"
    assert substitute_image("node:18", line) == "node:18"


def test_judge_accepts_the_expected_delay():
    result = matrix.judge(_cell("26.1"), _run({"ready_seconds": 16.2, "plain_tcp": True, "slowed_down": True}))

    assert result.passed, result.problems
    assert result.dind_ready == 16.2
    assert result.dind_plain_tcp is True
    assert result.image_daemons == ["dind:Build"]


def test_judge_flags_a_missing_delay():
    result = matrix.judge(_cell("26.1"), _run({"ready_seconds": 2.0, "plain_tcp": True, "slowed_down": False}))

    assert not result.passed
    assert result.problems == ["dind 26.1 on plain TCP did not delay its start, unlike the official image",
                               "dind 26.1 served plain TCP after 2.0 s, before the 15 s delay"]


def test_judge_flags_an_unexpected_delay_and_failed_job():
    start = {"ready_seconds": 16.0, "plain_tcp": True, "slowed_down": True}
    result = matrix.judge(_cell("19.03"), _run(start, status="failed"))

    assert result.problems == ["job Build failed",
                               "dind 19.03 on plain TCP delayed its start, unlike the official image"]


def test_cell_result_round_trip():
    result = matrix.judge(_cell("20.10"), _run({"ready_seconds": 16.0, "plain_tcp": True, "slowed_down": True}))

    assert matrix.CellResult.from_dict(result.to_dict()) == result


def test_grid_and_junit_have_one_row_per_cell():
    passed = matrix.judge(_cell("26.1"), _run({"ready_seconds": 16.2, "plain_tcp": True, "slowed_down": True}))
    failed = matrix.judge(_cell("19.03"), _run(None, status="failed"))
    failed.traces["Build"] = "\x1b[0;33mWARNING\x1b[0;m section_start:1:x\r\x1b[0K done"
    results = [passed, failed]

    grid = matrix_report.render_grid(results).splitlines()
    root = ElementTree.fromstring(matrix_report.junit_xml(results, secrets=["Build"]))

    assert grid[0].split()[:4] == ["MODE", "ENGINE", "RUNNER", "RESULT"]
    assert grid[1].split()[:7] == ["dind", "26.1", CURRENT_VERSION, "pass", "16.2", "s", "plain"]
    assert grid[2].split()[:5] == ["dind", "19.03", CURRENT_VERSION, "FAIL", "-"]
    assert grid[3] == "1 passed, 1 failed"
    assert grid[4] == f"  seed/dind/19.03/runner-{CURRENT_VERSION}: job Build failed"
    assert root.get("tests") == "2"
    assert root.get("failures") == "1"
    cases = root.findall("testcase")
    assert [case.get("name") for case in cases] == [f"engine 26.1 runner {CURRENT_VERSION}",
                                                    f"engine 19.03 runner {CURRENT_VERSION}"]
    assert cases[0].find("failure") is None
    assert cases[1].find("failure").get("message") == "job [MASKED] failed"
    assert "WARNING section_start:1:x\n done" in cases[1].find("system-out").text


# Real runs: every cell below starts real dind daemons of its engine line.

@pytest.fixture(scope="module")
def client(engine_client):
    client = docker.from_env(timeout=300)
    yield client
    client.close()


@pytest.mark.engine
@pytest.mark.dind
def test_plain_tcp_delay_differs_by_engine(client):
    scenario = load_scenario("d05-tls-port-matrix")
    cells = matrix.plan(scenario, ["tls-off-port-2375"], ["19.03", "26.1"], [CURRENT_VERSION])
    matrix.ensure_cell_images(client, cells)

    old, new = matrix.run_matrix(client, scenario, cells, parallel=2)

    assert old.passed, old.problems
    assert new.passed, new.problems
    assert old.dind_plain_tcp and new.dind_plain_tcp
    assert old.dind_ready < 15, old
    assert new.dind_ready >= 15, new


@pytest.mark.engine
@pytest.mark.dind
def test_tls_default_differs_by_engine(client):
    scenario = load_scenario("m1-engine-defaults")
    cells = matrix.plan(scenario, None, ["1.12", "28.5"], ["15.11.0"])
    matrix.ensure_cell_images(client, cells)

    old, new = matrix.run_matrix(client, scenario, cells, parallel=2)

    assert old.passed, old.problems
    assert new.passed, new.problems
    assert old.dind_plain_tcp is True
    assert new.dind_plain_tcp is False
    assert "DOCKER_HOST=tcp://docker:2375 DOCKER_TLS_CERTDIR=(empty)" in old.traces["Connect"]
    assert "DOCKER_HOST=tcp://docker:2376 DOCKER_TLS_CERTDIR=/certs" in new.traces["Connect"]
    assert "Version:           28.5.2" in new.traces["Connect"]


@pytest.mark.engine
@pytest.mark.dind
def test_run_cell_follows_options(run_cell, dind_version, runner_compat):
    result = run_cell("m1-engine-defaults", "dind")

    assert result.cell.engine == dind_version
    assert result.cell.runner_version == runner_compat
    assert result.passed, result.problems
    assert result.dind_plain_tcp is not dind_version.tls_default


@pytest.mark.engine
@pytest.mark.dind
def test_matrix_command_prints_grid(tmp_path):
    junit = tmp_path / "matrix.xml"

    outcome = run_harness("matrix", "--scenario", "m1-engine-defaults", "--dind-version", "19.03",
                          "--runner-compat", "18.6.0", "--junit", str(junit), timeout=600)

    assert outcome.returncode == 0, outcome.stderr[-3000:]
    lines = outcome.stdout.splitlines()
    assert lines[0].split()[:4] == ["MODE", "ENGINE", "RUNNER", "RESULT"]
    assert lines[1].split()[:4] == ["dind", "19.03", "18.6.0", "pass"]
    assert "1 passed, 0 failed" in lines
    root = ElementTree.parse(junit).getroot()
    assert [case.get("name") for case in root.findall("testcase")] == ["engine 19.03 runner 18.6.0"]


def _children(pid: int) -> set[int]:
    """Return the pids of the direct children of ``pid`` (Linux /proc)."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children.update(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return children


@pytest.mark.engine
@pytest.mark.dind
def test_sigterm_stops_workers_and_their_runs(client):
    environment = {**os.environ, "HARNESS_SESSION_ID": secrets.token_hex(4)}
    # On a local host the runner containers run on the real engine, where the loop below lists them.
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", "matrix", "--scenario", "m1-engine-defaults",
                                "--dind-version", "19.03", "--dind-version", "1.12", "--junit", os.devnull,
                                "--host-engine", "local"],
                               cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    workers: set[int] = set()
    deadline = time.monotonic() + 300
    # Wait until both workers run a job, that is until each owns a runner container.
    while time.monotonic() < deadline and process.poll() is None:
        workers |= _children(process.pid)
        # The low-level list reads labels without inspecting containers that may be gone by then.
        owners = {(container["Labels"] or {}).get(labels.OWNER_PID)
                  for container in client.api.containers(filters={"label": f"{labels.TYPE}=runner"})}
        if len(workers) == 2 and {str(pid) for pid in workers} <= owners:
            break
        time.sleep(1)
    assert len(workers) == 2, process.communicate()

    process.terminate()
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 128 + signal.SIGTERM
    # Each worker was interrupted mid-cell, not left to finish its runs.
    assert stderr.count("matrix worker: interrupted") == 2, stderr[-3000:]
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} still runs"
        left = client.api.containers(all=True, filters={"label": f"{labels.OWNER_PID}={pid}"})
        assert left == [], [container["Names"] for container in left]
