"""The harness runner as a job API client: masking before upload, reporting, stopping, and aborts.

The trace tests talk to a real coordinator over HTTP. The end-to-end test runs one job with the
docker executor on the real engine, through the same loop that runs in the runner container.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests

from harness import runner_loop
from harness.coordinator import Coordinator
from harness.coordinator_jobs import PipelineQueue
from harness.project import Project
from harness.runner_api import JobApi, TraceUpload, report_final_state
from harness.variables import Variable

SECRET = "s3cr3t-deploy-key-value"

PIPELINE = """
stages: [build, test]
build:
  stage: build
  image: busybox
  script:
    - echo "key is $DEPLOY_KEY"
    - printf 'no newline at the end %s' "$DEPLOY_KEY"
test:
  stage: test
  image: busybox
  script: [echo test]
"""

RUNNER_CONFIG = """
concurrent = 1

[[runners]]
  name = "loop-test"
  url = "http://gitlab.harness.invalid/"
  token = "glrt-looptestrunner"
  executor = "docker"
  [runners.docker]
    image = "busybox"
    pull_policy = "if-not-present"
"""


class Served:
    """A coordinator serving the test pipeline, and a runner-side API client for it."""

    def __init__(self, coordinator: Coordinator, project: Project, queue: PipelineQueue) -> None:
        self.coordinator = coordinator
        self.project = project
        self.queue = queue
        self.api = JobApi(coordinator.url, coordinator.runner_token)

    def state(self, name: str):
        return next(state for state in self.queue.states.values() if state.job.name == name)


@pytest.fixture
def served(serve_pipeline):
    pipeline = serve_pipeline(PIPELINE, name="loop",
                              variables=(Variable("DEPLOY_KEY", SECRET, masked=True, public=False),))
    pipeline.queue.create()
    return Served(pipeline.coordinator, pipeline.project, pipeline.queue)


def _take_job(served: Served) -> dict:
    job = served.api.request_job()
    assert job is not None
    assert served.api.update(job, {"state": "running"}).status_code == 200
    return job


class TestTraceUpload:
    def test_secret_split_across_writes_masked(self, served):
        job = _take_job(served)
        trace = TraceUpload(served.api, job, [SECRET])

        trace.write("key is " + SECRET[:6])
        trace.write(SECRET[6:] + " done\n")
        trace.close()

        stored = bytes(served.state("build").trace).decode()
        assert SECRET not in stored
        assert stored == "key is [MASKED] done\n"

    def test_partial_line_masked_at_close(self, served):
        job = _take_job(served)
        trace = TraceUpload(served.api, job, [SECRET])

        trace.write(f"last {SECRET}")
        trace.close()

        assert bytes(served.state("build").trace) == b"last [MASKED]"

    def test_uploads_while_job_runs(self, served):
        job = _take_job(served)
        trace = TraceUpload(served.api, job, []).start()

        trace.write("first line\n")
        deadline = time.monotonic() + 10
        while not served.state("build").trace and time.monotonic() < deadline:
            time.sleep(0.1)

        assert bytes(served.state("build").trace) == b"first line\n"
        trace.close()

    def test_resend_after_gap(self, served):
        job = _take_job(served)
        trace = TraceUpload(served.api, job, [])
        trace.write("0123456789\n")
        trace.send()
        # The coordinator lost the end of the trace; its 416 names the offset to resend from.
        del served.state("build").trace[4:]
        trace.write("abc\n")

        trace.send()

        assert bytes(served.state("build").trace) == b"0123456789\nabc\n"

    def test_canceled_job_stops_upload(self, served):
        job = _take_job(served)
        trace = TraceUpload(served.api, job, [])
        served.queue.abort()

        trace.write("after cancel\n")
        trace.send()

        assert trace.canceled
        assert bytes(served.state("build").trace) == b""


class TestFinalState:
    def test_checksum_and_report_accepted(self, served):
        job = _take_job(served)
        trace = TraceUpload(served.api, job, [])
        trace.write("output\n")
        trace.close()

        accepted = report_final_state(served.api, job, trace, {"state": "success", "harness_result": {"a": 1}})

        state = served.state("build")
        assert accepted
        assert state.status == "success"
        assert state.report["harness_result"] == {"a": 1}
        assert state.checksum() == trace.checksum()

    def test_unsent_trace_sent_after_202(self, served, monkeypatch):
        job = _take_job(served)
        trace = TraceUpload(served.api, job, [])
        trace.write("never uploaded\n")
        monkeypatch.setattr(time, "sleep", lambda seconds: None)

        assert report_final_state(served.api, job, trace, {"state": "failed", "exit_code": 3})

        state = served.state("build")
        assert bytes(state.trace) == b"never uploaded\n"
        assert (state.status, state.exit_code) == ("failed", 3)

    def test_aborted_job_not_accepted(self, served):
        job = _take_job(served)
        trace = TraceUpload(served.api, job, [])
        served.queue.abort()

        assert not report_final_state(served.api, job, trace, {"state": "success"})


class TestAbort:
    def test_pending_and_running_canceled(self, served):
        _take_job(served)

        canceled = served.queue.abort()

        assert sorted(state.job.name for state in canceled) == ["build", "test"]
        assert served.queue.status() == "canceled"
        assert served.api.request_job() is None

    def test_runner_update_gets_canceled_status(self, served):
        job = _take_job(served)
        served.queue.abort()

        response = served.api.update(job, {"state": "running"})

        assert response.status_code == 403
        assert response.headers["Job-Status"] == "canceled"

    def test_finished_jobs_kept(self, served):
        job = _take_job(served)
        trace = TraceUpload(served.api, job, [])
        report_final_state(served.api, job, trace, {"state": "success"})

        canceled = served.queue.abort()

        assert [state.job.name for state in canceled] == ["test"]
        assert served.state("build").status == "success"


class TestLoop:
    def test_stop_ends_serve(self, served):
        stop = threading.Event()
        thread = threading.Thread(target=runner_loop.serve, args=(served.api, _never_called, 2, stop), daemon=True)
        served.queue.abort()
        thread.start()

        stop.set()
        thread.join(timeout=10)

        assert not thread.is_alive()

    def test_gone_coordinator_ends_poll(self, served, monkeypatch):
        monkeypatch.setattr(runner_loop, "UNREACHABLE_SECONDS", 0.5)
        served.coordinator.close()
        started = time.monotonic()

        runner_loop.poll(served.api, _never_called, 0, threading.Event())

        assert time.monotonic() - started < 10

    def test_executor_crash_fails_job(self, served):
        def crash(payload, trace, concurrent_id):
            trace.write(f"before the crash {SECRET}\n")
            raise RuntimeError(f"engine said no to {SECRET}")

        runner_loop.run_job(served.api, served.api.request_job(), crash, 0)

        state = served.state("build")
        stored = bytes(state.trace).decode()
        assert state.status == "failed"
        assert state.failure_reason == "runner_system_failure"
        assert "ERROR: Job failed (system failure): the executor raised RuntimeError: engine said no to [MASKED]" \
            in stored
        assert SECRET not in stored
        assert SECRET not in json.dumps(state.report)


class TestIdleRunner:
    def test_silent_runner_with_pending_job_raises(self, served):
        from harness.run import _check_runner_polls
        from harness.runner import RunnerStopped

        long_ago = time.monotonic() - 10_000
        served.coordinator.last_runner_request = long_ago

        with pytest.raises(RunnerStopped, match="no runner requested a job from"):
            _check_runner_polls(served.coordinator, served.queue, long_ago)

    def test_running_job_keeps_run_waiting(self, served):
        from harness.run import _check_runner_polls

        _take_job(served)
        long_ago = time.monotonic() - 10_000
        served.coordinator.last_runner_request = long_ago

        _check_runner_polls(served.coordinator, served.queue, long_ago)

    def test_recent_request_keeps_run_waiting(self, served):
        from harness.run import _check_runner_polls

        served.api.request_job()
        served.queue.states[91001].status = "pending"

        _check_runner_polls(served.coordinator, served.queue, time.monotonic() - 10_000)


def _never_called(payload, trace, concurrent_id):
    raise AssertionError("no job should run")


@pytest.mark.engine
@pytest.mark.images
def test_loop_runs_job_with_executor(served, engine_client, tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text(RUNNER_CONFIG)
    execute = runner_loop.executor_for(engine_client, config, served.project.repo_dir)
    stop = threading.Event()
    thread = threading.Thread(target=runner_loop.serve, args=(served.api, execute, 1, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while served.queue.status() not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=60)

    build, test = served.state("build"), served.state("test")
    stored = bytes(build.trace).decode()
    # Catches a runner that sends the trace to the coordinator before masking it.
    assert SECRET not in stored
    assert "key is [MASKED]" in stored
    assert "no newline at the end [MASKED]" in stored
    assert SECRET not in json.dumps(build.report)
    assert (build.status, test.status) == ("success", "success"), stored
    # The executor's result rides along in the final update.
    result = build.report["harness_result"]
    assert result["status"] == "success"
    assert "trace" not in result
    assert any(container["type"] == "build" for container in result["containers"])
    assert served.coordinator.requests["PATCH /jobs/:id/trace"] >= 2
    assert not thread.is_alive()


def test_request_with_wrong_token_raises(served):
    api = JobApi(served.coordinator.url, "glrt-wrong")

    with pytest.raises(Exception, match="returned 403"):
        api.request_job()


def test_request_unreachable_raises(served):
    served.coordinator.close()

    with pytest.raises(requests.RequestException):
        served.api.request_job()
