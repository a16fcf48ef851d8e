"""Contract tests of the built-in coordinator: the runner job API, git over HTTP and the read API.

Each test pins one rule of how GitLab answers a runner (status code, header or JSON field), as
gitlab-runner's ``network/gitlab.go`` expects it. They need git but no Docker engine.
"""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import gitlab
import pytest
import requests

from harness.coordinator import Coordinator
from harness.gitlab_results import PipelineReader
from harness.project import Project
from harness.variables import Variable

PIPELINE = """
stages: [build, test, cleanup]
build:
  stage: build
  image: busybox
  services: [docker:dind]
  script: [echo build]
test:
  stage: test
  script: [echo test]
lint:
  stage: test
  allow_failure: true
  script: [echo lint]
report:
  stage: cleanup
  when: on_failure
  script: [echo report]
"""


class Server:
    """A started coordinator with its pipeline compiled against its own URL."""

    def __init__(self, coordinator: Coordinator, project: Project, jobs) -> None:
        self.coordinator = coordinator
        self.project = project
        self.jobs = {job.name: job for job in jobs}
        self.url = coordinator.url
        self.api = coordinator.url + "/api/v4"

    def request_job(self, token: str | None = None) -> requests.Response:
        return requests.post(f"{self.api}/jobs/request", timeout=10,
                             json={"info": {"name": "gitlab-runner", "version": "19.4.0"},
                                   "token": self.coordinator.runner_token if token is None else token})

    def create_pipeline(self, ref: str = "main") -> requests.Response:
        return requests.post(f"{self.api}/projects/{self.project.id}/pipeline", json={"ref": ref},
                             headers={"PRIVATE-TOKEN": self.coordinator.api_token}, timeout=10)

    def update(self, job: dict, state: str, token: str | None = None, **fields) -> requests.Response:
        return requests.put(f"{self.api}/jobs/{job['id']}", timeout=10,
                            json={"token": job["token"] if token is None else token, "state": state, **fields})

    def patch_trace(self, job: dict, content_range: str, body: bytes) -> requests.Response:
        return requests.patch(f"{self.api}/jobs/{job['id']}/trace", data=body, timeout=10,
                              headers={"JOB-TOKEN": job["token"], "Content-Type": "text/plain",
                                       "Content-Range": content_range})

    def finish(self, job: dict, state: str = "success", exit_code: int | None = None) -> requests.Response:
        extra = {} if exit_code is None else {"exit_code": exit_code}
        return self.update(job, state, output={"checksum": "crc32:00000000", "bytesize": 0}, **extra)


@pytest.fixture
def server(serve_pipeline):
    served = serve_pipeline(PIPELINE, files={"README": "project file\n"}, pipeline_id=77,
                            variables=(Variable("DEPLOY_KEY", "s3cr3t-value", masked=True, public=False),))
    return Server(served.coordinator, served.project, served.compiled.jobs)


@pytest.fixture
def started(server):
    assert server.create_pipeline().status_code == 201
    return server


def _take(server: Server) -> dict:
    response = server.request_job()
    assert response.status_code == 201, response.text
    return response.json()


class TestJobRequest:
    def test_no_pipeline_gives_204(self, server):
        response = server.request_job()
        assert response.status_code == 204
        assert response.content == b""

    def test_wrong_runner_token_gives_403(self, started):
        assert started.request_job("glrt-wrong").status_code == 403

    def test_missing_runner_token_gives_403(self, started):
        response = requests.post(f"{started.api}/jobs/request", json={"info": {}}, timeout=10)
        assert response.status_code == 403

    def test_job_is_201_json(self, started):
        response = started.request_job()
        assert response.status_code == 201
        assert response.headers["Content-Type"] == "application/json"

    def test_job_body_is_compiled_payload(self, started):
        job = _take(started)
        assert job == started.jobs["build"].payload

    def test_job_body_fields(self, started):
        job = _take(started)
        assert job["job_info"]["name"] == "build"
        assert job["job_info"]["project_id"] == started.project.id
        assert job["git_info"]["repo_url"] == \
            f"http://gitlab-ci-token:{job['token']}@{started.url.partition('://')[2]}/group/proj.git"
        assert [step["name"] for step in job["steps"]][0] == "script"

    def test_job_token_variable_not_public(self, started):
        variables = {v["key"]: v for v in _take(started)["variables"]}
        assert variables["CI_JOB_TOKEN"]["public"] is False
        assert variables["CI_JOB_TOKEN"]["masked"] is True

    def test_settings_variable_not_public(self, started):
        # Runners hand services only public variables, so this flag keeps secrets out of them.
        variables = {v["key"]: v for v in _take(started)["variables"]}
        assert variables["DEPLOY_KEY"]["public"] is False
        assert variables["DEPLOY_KEY"]["masked"] is True

    def test_predefined_variables_public(self, started):
        variables = {v["key"]: v for v in _take(started)["variables"]}
        assert variables["CI_PROJECT_PATH"]["public"] is True
        assert variables["CI_SERVER_URL"]["value"] == started.url

    def test_job_handed_out_once(self, started):
        _take(started)
        assert started.request_job().status_code == 204


class TestStageOrder:
    def test_next_stage_waits_for_running_job(self, started):
        _take(started)
        assert started.request_job().status_code == 204

    def test_next_stage_after_success(self, started):
        build = _take(started)
        assert started.finish(build).status_code == 200
        names = {_take(started)["job_info"]["name"], _take(started)["job_info"]["name"]}
        assert names == {"test", "lint"}

    def test_failure_skips_later_on_success_jobs(self, started):
        build = _take(started)
        started.finish(build, "failed", exit_code=1)
        report = _take(started)
        assert report["job_info"]["name"] == "report"
        states = {state.job.name: state.status for state in started.coordinator.queue.states.values()}
        assert states["test"] == "skipped"
        assert states["lint"] == "skipped"

    def test_allowed_failure_does_not_stop_pipeline(self, started):
        started.finish(_take(started))
        for job in (_take(started), _take(started)):
            started.finish(job, "failed" if job["job_info"]["name"] == "lint" else "success")
        states = {state.job.name: state.status for state in started.coordinator.queue.states.values()}
        assert states["report"] == "skipped"
        assert started.coordinator.queue.status() == "success"

    def test_selected_jobs_only(self, server):
        server.coordinator.queue.selected = ("test",)
        server.create_pipeline()
        assert _take(server)["job_info"]["name"] == "test"
        assert server.coordinator.queue.states[server.jobs["build"].id].status == "skipped"


class TestUpdateJob:
    def test_running_touch_gives_200(self, started):
        job = _take(started)
        response = started.update(job, "running")
        assert response.status_code == 200

    def test_wrong_job_token_gives_403(self, started):
        job = _take(started)
        assert started.update(job, "running", token="wrong").status_code == 403

    def test_unknown_job_gives_404(self, started):
        job = dict(_take(started), id=1)
        assert started.update(job, "running").status_code == 404

    def test_job_not_running_gives_403_with_status(self, started):
        job = _take(started)
        started.finish(job)
        response = started.update(job, "running")
        assert response.status_code == 403
        assert response.headers["Job-Status"] == "success"

    def test_trace_still_missing_gives_202(self, started):
        job = _take(started)
        response = started.update(job, "success", output={"checksum": "crc32:00000000", "bytesize": 5})
        assert response.status_code == 202
        assert response.headers["X-GitLab-Trace-Update-Interval"] == "3"
        assert started.coordinator.queue.states[job["id"]].status == "running"

    def test_checksum_mismatch_gives_412(self, started):
        job = _take(started)
        started.patch_trace(job, "0-4", b"hello")
        response = started.update(job, "success", output={"checksum": "crc32:deadbeef", "bytesize": 5})
        assert response.status_code == 412

    def test_matching_checksum_gives_200(self, started):
        job = _take(started)
        started.patch_trace(job, "0-4", b"hello")
        checksum = f"crc32:{zlib.crc32(b'hello'):08x}"
        response = started.update(job, "failed", output={"checksum": checksum, "bytesize": 5},
                                  exit_code=3, failure_reason="script_failure")
        assert response.status_code == 200
        state = started.coordinator.queue.states[job["id"]]
        assert (state.status, state.exit_code, state.failure_reason) == ("failed", 3, "script_failure")

    def test_final_update_without_checksum_gives_200(self, started):
        job = _take(started)
        assert started.update(job, "success").status_code == 200

    def test_unknown_state_gives_400(self, started):
        job = _take(started)
        assert started.update(job, "exploded").status_code == 400

    def test_extra_fields_kept_as_report(self, started):
        job = _take(started)
        started.update(job, "success", harness_result={"snapshots": []})
        assert started.coordinator.queue.states[job["id"]].report["harness_result"] == {"snapshots": []}


class TestPatchTrace:
    def test_append_gives_202_with_range(self, started):
        job = _take(started)
        response = started.patch_trace(job, "0-9", b"0123456789")
        assert response.status_code == 202
        assert response.headers["Range"] == "0-10"
        assert response.headers["Job-Status"] == "running"

    def test_next_chunk_continues(self, started):
        job = _take(started)
        started.patch_trace(job, "0-9", b"0123456789")
        response = started.patch_trace(job, "10-12", b"abc")
        assert response.headers["Range"] == "0-13"
        assert bytes(started.coordinator.queue.states[job["id"]].trace) == b"0123456789abc"

    def test_gap_gives_416_with_offset(self, started):
        job = _take(started)
        started.patch_trace(job, "0-9", b"0123456789")
        response = started.patch_trace(job, "20-22", b"abc")
        assert response.status_code == 416
        assert response.headers["Range"] == "0-10"

    def test_resend_from_zero_replaces(self, started):
        job = _take(started)
        started.patch_trace(job, "0-9", b"0123456789")
        started.patch_trace(job, "0-2", b"xyz")
        assert bytes(started.coordinator.queue.states[job["id"]].trace) == b"xyz"

    def test_invalid_content_range_gives_400(self, started):
        job = _take(started)
        assert started.patch_trace(job, "ten-twenty", b"abc").status_code == 400

    def test_wrong_job_token_gives_403(self, started):
        job = _take(started)
        assert started.patch_trace(dict(job, token="wrong"), "0-2", b"abc").status_code == 403

    def test_finished_job_gives_403(self, started):
        job = _take(started)
        started.finish(job)
        response = started.patch_trace(job, "0-2", b"abc")
        assert response.status_code == 403
        assert response.headers["Job-Status"] == "success"


class TestVerifyRunner:
    def test_valid_token_gives_runner(self, server):
        response = requests.post(f"{server.api}/runners/verify", json={"token": server.coordinator.runner_token},
                                 timeout=10)
        assert response.status_code == 200
        assert response.json() == {"id": 1, "token": server.coordinator.runner_token,
                                   "token_expires_at": "0001-01-01T00:00:00Z"}

    def test_invalid_token_gives_403(self, server):
        response = requests.post(f"{server.api}/runners/verify", json={"token": "glrt-x"}, timeout=10)
        assert response.status_code == 403


class TestGitOverHttp:
    def _clone(self, url: str, target: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "clone", "--quiet", url, str(target)], capture_output=True, text=True,
                              timeout=60, env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"})

    def test_clone_with_job_token(self, started, tmp_path):
        job = _take(started)
        result = self._clone(job["git_info"]["repo_url"], tmp_path / "clone")
        assert result.returncode == 0, result.stderr
        head = subprocess.run(["git", "-C", str(tmp_path / "clone"), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert head == job["git_info"]["sha"]
        assert (tmp_path / "clone" / "README").read_text() == "project file\n"

    def test_clone_without_credentials_rejected(self, started, tmp_path):
        _take(started)
        result = self._clone(f"{started.url}/group/proj.git", tmp_path / "clone")
        assert result.returncode != 0
        assert not (tmp_path / "clone").exists()

    def test_unauthenticated_gets_401_challenge(self, started):
        response = requests.get(f"{started.url}/group/proj.git/info/refs?service=git-upload-pack", timeout=10)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="GitLab"'

    def test_finished_job_token_rejected(self, started, tmp_path):
        job = _take(started)
        started.finish(job)
        result = self._clone(job["git_info"]["repo_url"], tmp_path / "clone")
        assert result.returncode != 0


class TestReadApi:
    def test_missing_private_token_gives_401(self, server):
        response = requests.get(f"{server.api}/projects/{server.project.id}", timeout=10)
        assert response.status_code == 401

    def test_project_by_path(self, server):
        client = gitlab.Gitlab(server.url, private_token=server.coordinator.api_token)
        project = client.projects.get("group/proj")
        assert (project.id, project.path_with_namespace) == (server.project.id, "group/proj")

    def test_unknown_ref_rejected(self, server):
        client = gitlab.Gitlab(server.url, private_token=server.coordinator.api_token)
        with pytest.raises(gitlab.exceptions.GitlabCreateError):
            client.projects.get(server.project.id, lazy=True).pipelines.create({"ref": "nope"})

    def test_create_pipeline_opens_first_stage(self, server):
        reader = PipelineReader(server.url, server.coordinator.api_token, server.project.id)
        assert reader.create("main") == 77
        statuses = {job.name: job.status for job in reader.jobs()}
        assert statuses == {"build": "pending", "test": "created", "lint": "created", "report": "created"}

    def test_jobs_and_traces_after_run(self, server):
        reader = PipelineReader(server.url, server.coordinator.api_token, server.project.id)
        reader.create("main")
        while (response := server.request_job()).status_code == 201:
            job = response.json()
            server.patch_trace(job, "0-2", job["job_info"]["name"].encode()[:3])
            server.update(job, "success")
        assert reader.wait(timeout=10, interval=0.1) == "success"
        jobs = reader.jobs()
        assert [job.name for job in jobs] == ["build", "test", "lint", "report"]
        assert [job.status for job in jobs] == ["success", "success", "success", "skipped"]
        assert jobs[0].trace == "bui"
        assert jobs[3].trace == ""
        assert jobs[0].started_at > 0

    def test_pipeline_failed_status(self, server):
        reader = PipelineReader(server.url, server.coordinator.api_token, server.project.id)
        reader.create("main")
        server.update(server.request_job().json(), "failed")
        server.update(server.request_job().json(), "success")
        assert reader.wait(timeout=10, interval=0.1) == "failed"
