"""An independent runner-side client, PyPI's ``gitlab-python-runner``, completes a job on the coordinator.

gitlab-python-runner 14.3.20 polls ``POST /api/v4/jobs/request``, clones ``git_info.repo_url``
over git HTTP with the job token, streams its trace with PATCH and reports with PUT. Its shell
executor runs the script on this machine, so no image is needed. It imports helpers that
gitlab-emulator removed after 1.x, so it is installed with gitlab-emulator 1.1.9, in its own
virtual environment because gitlab-emulator brings another python-gitlab version.
"""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

from harness.coordinator import Coordinator, ProjectInfo
from harness.coordinator_jobs import PipelineQueue
from harness.engine import state_dir
from harness.gitlab_results import PipelineReader
from harness.locks import machine_lock
from harness.pipeline import compile_pipeline, load_pipeline
from harness.project import Project

PACKAGES = ["gitlab-python-runner==14.3.20", "gitlab-emulator==1.1.9"]
PIPELINE = """
shell-job:
  script:
    - echo "hello from $CI_JOB_NAME"
    - cat README
"""


@pytest.fixture(scope="module")
def runner_python() -> Path:
    """Return the interpreter of a virtual environment with gitlab-python-runner, created once."""
    directory = state_dir() / "gitlab-python-runner"
    python = directory / "bin" / "python"
    with machine_lock("gitlab-python-runner"):
        if not (directory / "installed").exists():
            venv.create(directory, with_pip=True, clear=True)
            install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PACKAGES],
                                     capture_output=True, text=True, timeout=600)
            if install.returncode != 0:
                pytest.skip(f"pip could not install {' '.join(PACKAGES)}: {install.stderr.strip()[-300:]}")
            (directory / "installed").write_text("\n".join(PACKAGES) + "\n")
    return python


def test_python_runner_completes_shell_job(runner_python: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / ".gitlab-ci.yml").write_text(PIPELINE)
    (source / "README").write_text("project file\n")
    project = Project.from_directory(source, "group", "proj", branch="main", work_dir=tmp_path / "work")
    builds = tmp_path / "builds"
    builds.mkdir()

    with Coordinator(ProjectInfo(project.id, project.path, "main", project.repo_dir)) as coordinator:
        compiled = compile_pipeline(load_pipeline(source / ".gitlab-ci.yml"), project, server_url=coordinator.url,
                                    pipeline_id=55, first_job_id=55001)
        coordinator.serve(PipelineQueue(55, compiled.stages, compiled.jobs))
        reader = PipelineReader(coordinator.url, coordinator.api_token, project.id)
        reader.create("main")
        config = tmp_path / "runner.yml"
        config.write_text(f"server: {coordinator.url}\ntoken: {coordinator.runner_token}\n"
                          f"dir: {builds}\nexecutor: shell\nshell: /bin/sh\n")

        run = subprocess.run([str(runner_python), "-m", "GitlabPyRunner", "--start", str(config), "--once"],
                             capture_output=True, text=True, timeout=300)

        assert run.returncode == 0, run.stderr
        assert reader.wait(timeout=10, interval=0.2) == "success"
        job = reader.jobs()[0]
        requests_served = dict(coordinator.requests)

    assert (job.name, job.status) == ("shell-job", "success")
    assert "gitlab-python-runner 14.3.20" in job.trace
    # The clone went through the coordinator's git endpoint with the job token.
    assert "project file" in job.trace
    assert requests_served.get("POST git", 0) >= 1, requests_served
    assert "hello from shell-job" in job.trace
    assert requests_served.get("PATCH /jobs/:id/trace", 0) >= 1, requests_served
