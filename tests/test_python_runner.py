"""A second, independent runner client against the built-in coordinator: gitlab-python-runner.

gitlab-python-runner (PyPI, a runner written in Python) polls ``/api/v4/jobs/request``, clones
the project over git HTTP with the job token, runs the script with its shell executor, streams
the trace and reports the final state. Results are read back through python-gitlab, as the
harness reads its own runs. ``make python-runner`` installs it into its own virtual environment.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.coordinator import Coordinator
from harness.engine import state_dir
from harness.gitlab_results import PipelineReader

PIPELINE = """
stages: [build, test]
compile:
  stage: build
  script:
    - echo "compiled $CI_PROJECT_PATH at $CI_COMMIT_SHORT_SHA"
    - cat README
check:
  stage: test
  script:
    - echo "checking in stage $CI_JOB_STAGE"
    - exit 3
"""
RUNNER_TIMEOUT_SECONDS = 120


@pytest.fixture(scope="module")
def python_runner() -> Path:
    """Return the gitlab-python-runner program; skip when ``make python-runner`` has not installed it."""
    program = state_dir() / "tools" / "gitlab-python-runner" / "bin" / "python"
    if not (program.parent / "gitlab-runner.py").is_file():
        pytest.skip("gitlab-python-runner is not installed; run `make python-runner`")
    return program


@pytest.fixture
def served(serve_pipeline):
    """A coordinator with the two-stage pipeline created through python-gitlab."""
    pipeline = serve_pipeline(PIPELINE, files={"README": "file from the clone\n"})
    coordinator = pipeline.coordinator
    reader = PipelineReader(coordinator.url, coordinator.api_token, pipeline.project.id)
    reader.create("main")
    return coordinator, reader, pipeline.project


def _run_one_job(python_runner: Path, coordinator: Coordinator, work: Path) -> subprocess.CompletedProcess:
    """Run gitlab-python-runner until it has finished one job."""
    work.mkdir(exist_ok=True)
    config = work / "gitlab-runner.yml"
    config.write_text(f"server: {coordinator.url}\ntoken: {coordinator.runner_token}\n"
                      f"executor: shell\nshell: /bin/sh\ndir: {work}\n")
    return subprocess.run([str(python_runner), "-m", "GitlabPyRunner", "--start", str(config), "--once"],
                          capture_output=True, text=True, timeout=RUNNER_TIMEOUT_SECONDS)


def test_python_runner_completes_pipeline(python_runner, served, tmp_path):
    coordinator, reader, project = served

    first = _run_one_job(python_runner, coordinator, tmp_path / "runner")
    second = _run_one_job(python_runner, coordinator, tmp_path / "runner")

    # Catches a job payload, clone URL or job token this client cannot use.
    assert first.returncode == 0, first.stderr
    # The second job exits 3, and the client reports the failure with its own exit status.
    assert second.returncode == 1, second.stderr
    assert reader.wait(timeout=30) == "failed"
    jobs = {job.name: job for job in reader.jobs()}
    assert jobs["compile"].status == "success"
    assert f"compiled group/proj at {project.sha[:8]}" in jobs["compile"].trace
    # Only a clone over git HTTP with the job token brings README into the build directory.
    assert "file from the clone" in jobs["compile"].trace
    assert jobs["check"].status == "failed"
    assert "checking in stage test" in jobs["check"].trace


def test_python_runner_waits_for_stage(python_runner, served, tmp_path):
    coordinator, reader, project = served

    first = _run_one_job(python_runner, coordinator, tmp_path / "runner")

    # Catches a queue that hands out the test stage before build has finished.
    assert first.returncode == 0, first.stderr
    statuses = {job.name: job.status for job in reader.jobs()}
    assert statuses == {"compile": "success", "check": "pending"}
