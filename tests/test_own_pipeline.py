"""A user's own pipeline, runner configs and project, from the command line and from pytest."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.own_pipeline import parse_mode_paths, scenario_from_files, selected_modes
from test_bad_input import assert_single_error, run_harness

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "own-pipeline"
OWN_ARGS = ("--pipeline", str(EXAMPLE / ".gitlab-ci.yml"),
            "--runner-config", f"dind={EXAMPLE / 'ci' / 'config.dind.toml'}",
            "--runner-config", f"dood={EXAMPLE / 'ci' / 'config.dood.toml'}",
            "--project", str(EXAMPLE))

TWO_JOBS = """\
stages: [build, test]
first:
  stage: build
  image: busybox
  script: [echo first ran]
second:
  stage: test
  image: busybox
  script: [echo second ran]
"""


def test_mode_paths_single_and_per_mode() -> None:
    assert parse_mode_paths(["a.toml"], "--runner-config") == {None: Path("a.toml")}
    assert parse_mode_paths(["dind=a.toml", "dood=b.toml"], "--runner-config") == {
        "dind": Path("a.toml"), "dood": Path("b.toml")}
    # A prefix that names no mode stays part of the path.
    assert parse_mode_paths(["x=a.toml"], "--pipeline") == {None: Path("x=a.toml")}


def test_mode_paths_reject_mixed_and_repeated() -> None:
    with pytest.raises(InputError, match="mixes PATH with MODE=PATH"):
        parse_mode_paths(["a.toml", "dind=b.toml"], "--runner-config")
    with pytest.raises(InputError, match="given twice for dind"):
        parse_mode_paths(["dind=a.toml", "dind=b.toml"], "--runner-config")


def test_selected_modes_follow_named_paths() -> None:
    assert selected_modes("both", {"dind": Path("a")}) == ["dind"]
    assert selected_modes("both", {None: Path("a")}) == ["dind", "dood"]
    assert selected_modes("dood", {"dind": Path("a")}) == ["dood"]
    with pytest.raises(InputError, match="invalid mode 'k8s'"):
        selected_modes("k8s", {None: Path("a")})


def test_single_config_cannot_serve_both_modes() -> None:
    pipeline = {None: EXAMPLE / ".gitlab-ci.yml"}
    config = {None: EXAMPLE / "ci" / "config.dind.toml"}
    with pytest.raises(InputError, match="one runner config cannot serve both modes"):
        scenario_from_files(pipeline, config, EXAMPLE, ["dind", "dood"])


def test_missing_mode_file_names_option() -> None:
    with pytest.raises(InputError, match="no file for mode dood"):
        scenario_from_files({None: EXAMPLE / ".gitlab-ci.yml"}, {"dind": EXAMPLE / "ci" / "config.dind.toml"},
                            EXAMPLE, ["dood"])


def test_scenario_from_files_fields() -> None:
    scenario = scenario_from_files({None: EXAMPLE / ".gitlab-ci.yml"}, {"dood": EXAMPLE / "ci" / "config.dood.toml"},
                                   EXAMPLE, ["dood"], branch="release")
    assert list(scenario.modes) == ["dood"]
    assert scenario.modes["dood"].runner_config == EXAMPLE / "ci" / "config.dood.toml"
    assert scenario.project_dir == EXAMPLE
    assert scenario.branch == "release"
    assert scenario.registry is None


@pytest.mark.engine
def test_scenario_and_pipeline_together_rejected() -> None:
    outcome = run_harness("run", "seed", *OWN_ARGS)
    assert_single_error(outcome, 2, "command line: scenario: ", "given together with --pipeline")


@pytest.mark.engine
def test_missing_project_option_rejected() -> None:
    outcome = run_harness("run", "--pipeline", str(EXAMPLE / ".gitlab-ci.yml"),
                          "--runner-config", str(EXAMPLE / "ci" / "config.dood.toml"), "--mode", "dood")
    assert_single_error(outcome, 2, "command line: --project: missing")


@pytest.mark.engine
@pytest.mark.images
def test_unknown_job_rejected() -> None:
    outcome = run_harness("run", *OWN_ARGS, "--mode", "dood", "--job", "no-such-job")
    assert_single_error(outcome, 2, "--job no-such-job: no such job in the pipeline", "build-image")


@pytest.mark.engine
@pytest.mark.images
@pytest.mark.dood
def test_job_option_skips_others(tmp_path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / ".gitlab-ci.yml").write_text(TWO_JOBS)
    outcome = run_harness("run", "--pipeline", str(project / ".gitlab-ci.yml"),
                          "--runner-config", str(EXAMPLE / "ci" / "config.dood.toml"), "--project", str(project),
                          "--mode", "dood", "--job", "second", "--show-traces", timeout=240)
    assert outcome.returncode == 0, outcome.stderr
    assert re.search(r"first\s+skipped \(not selected by --job\)", outcome.stdout), outcome.stdout
    assert re.search(r"second\s+success", outcome.stdout), outcome.stdout
    assert "second ran" in outcome.stdout
    assert "first ran" not in outcome.stdout


@pytest.mark.engine
@pytest.mark.images
@pytest.mark.dind
@pytest.mark.dood
@pytest.mark.slow
def test_example_repository_suite_passes(tmp_path) -> None:
    copy = tmp_path / "own-pipeline"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.html"))
    junit = tmp_path / "junit.xml"
    report = copy / "report.html"
    # Under pytest-xdist the controller writes the report and the JUnit properties from the runs
    # it receives from the workers. With --dist loadfile the one test file runs on one worker.
    process = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2",
                              "--dist", "loadfile", f"--junitxml={junit}", "--harness-report=report.html"],
                             cwd=copy, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-12000:] + process.stderr[-2000:]
    assert "4 passed" in process.stdout

    properties = {element.get("name"): element.get("value") for element in ElementTree.parse(junit).iter("property")}
    assert "example/hello:ci" in properties["placement own-pipeline/dind dind:build-image"]
    assert "example/hello:ci" in properties["placement own-pipeline/dood host"]
    assert properties["placement own-pipeline/dood arrow"].endswith("-> host")

    html = report.read_text()
    assert 'data-daemon="dind:build-image"' in html
    assert 'data-to="host"' in html
