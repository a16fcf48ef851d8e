"""The harness runner as a job API client: poll the coordinator, run each job, report it.

``python3 -m harness.runner_loop`` is the runner container's main process. Each of the config's
``concurrent`` slots polls ``POST /api/v4/jobs/request`` and runs the job it gets with the
docker executor (:func:`harness.executor.__main__.run_payload`), with the slot number as
``concurrent_id``. The trace goes to the coordinator while the job runs, and the final ``PUT``
carries the executor's result (containers, volumes, placement snapshots) as the extra field
``harness_result``, masked like the trace. The loop ends when ``stop`` is set (in-process), when
the container is removed (the harness's teardown), or when the coordinator has not responded for
``UNREACHABLE_SECONDS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

import requests

from harness.runner_api import JobApi, JobApiError, TraceUpload, report_final_state
from harness.variables import mask, masked_values

log = logging.getLogger(__name__)

# Seconds between job requests while none is pending.
POLL_INTERVAL = 0.5
# After this many seconds without a response the coordinator is gone (its run ended), so the loop stops.
UNREACHABLE_SECONDS = 60
# The environment variable that carries the runner token into the container, so it stays off the command line.
TOKEN_VARIABLE = "HARNESS_RUNNER_TOKEN"

# ``execute(payload, trace, concurrent_id)`` runs one job and returns the executor's result dict.
Execute = Callable[[dict, TextIO, int], dict]


def serve(api: JobApi, execute: Execute, slots: int, stop: threading.Event) -> None:
    """Run ``slots`` polling threads until ``stop`` is set or the coordinator stays unreachable."""
    threads = [threading.Thread(target=poll, args=(api, execute, slot, stop), name=f"runner-slot-{slot}",
                                daemon=True) for slot in range(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def poll(api: JobApi, execute: Execute, slot: int, stop: threading.Event) -> None:
    """Request and run jobs in slot ``slot`` until ``stop`` is set or the coordinator is gone."""
    last_answer = time.monotonic()
    while not stop.is_set():
        try:
            job = api.request_job()
        except (requests.RequestException, JobApiError) as error:
            if time.monotonic() - last_answer > UNREACHABLE_SECONDS:
                log.warning("runner slot %d stops: no response from %s for %d s: %s", slot, api.base,
                            UNREACHABLE_SECONDS, error)
                return
            stop.wait(POLL_INTERVAL)
            continue
        last_answer = time.monotonic()
        if job is None:
            stop.wait(POLL_INTERVAL)
            continue
        run_job(api, job, execute, slot)
        last_answer = time.monotonic()


def run_job(api: JobApi, job: dict, execute: Execute, slot: int) -> None:
    """Run one job handed out by the coordinator and report its trace and final state."""
    secrets = masked_values(job.get("variables", []))
    try:
        touch = api.update(job, {"state": "running"})
    except requests.RequestException as error:
        log.warning("job %s not started: the running update failed: %s", job["id"], error)
        return
    if touch.status_code != 200:
        log.warning("job %s not started: the running update returned %s", job["id"], touch.status_code)
        return

    log.info("job %s (%s) starts in slot %d", job["id"], job.get("job_info", {}).get("name", "?"), slot)
    trace = TraceUpload(api, job, secrets).start()
    try:
        result = execute(job, trace, slot)
    except Exception as error:  # noqa: BLE001 - any crash of the executor fails the job, as in gitlab-runner
        fault = mask(f"the executor raised {type(error).__name__}: {error}", secrets)
        log.exception("job %s: %s", job["id"], fault)
        trace.write(f"\nERROR: Job failed (system failure): {fault}\n")
        result = {"status": "failed", "exit_code": None, "failure_reason": "runner_system_failure",
                  "fault": fault}
    trace.close()

    state = "success" if result.get("status") == "success" else "failed"
    body = {"state": state, "harness_result": _masked_report(result, secrets)}
    if state == "failed":
        body["failure_reason"] = result.get("failure_reason") or "script_failure"
        if isinstance(result.get("exit_code"), int):
            body["exit_code"] = result["exit_code"]
    report_final_state(api, job, trace, body)


def _masked_report(result: dict, secrets: list[str]) -> dict:
    """Return the executor's result without its trace (sent already), with masked values hidden."""
    report = {key: value for key, value in result.items() if key != "trace"}
    return json.loads(mask(json.dumps(report), secrets))


def executor_for(client, config_path: Path, sources: Path, watch_paths: tuple[str, ...] = (),
                 runner_version: str | None = None) -> Execute:
    """Return an ``Execute`` that runs jobs with the docker executor on the engine behind ``client``."""
    from harness.executor.__main__ import run_payload
    from harness.executor.compat import RunnerCompat

    compat = RunnerCompat.for_version(runner_version) if runner_version else None

    def execute(payload: dict, trace: TextIO, concurrent_id: int) -> dict:
        return run_payload(client, config_path, payload, sources, trace, compat=compat,
                           watch_paths=watch_paths, concurrent_id=concurrent_id)

    return execute


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line of ``python3 -m harness.runner_loop``."""
    from harness.executor.__main__ import add_job_options

    parser = argparse.ArgumentParser(prog="python3 -m harness.runner_loop",
                                     description="Poll a GitLab job API and run its jobs with the docker executor.")
    parser.add_argument("--url", required=True, help="the coordinator's base URL, such as http://10.212.3.1:40123")
    add_job_options(parser, sources_required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve jobs until the coordinator is gone; return 2 when the token or config is missing."""
    import docker

    from harness.errors import InputError
    from harness.runner_config import load_runner_config

    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    token = os.environ.get(TOKEN_VARIABLE, "")
    if not token:
        print(f"ERROR: {TOKEN_VARIABLE} is not set; pass the runner token in it", file=sys.stderr)
        return 2
    try:
        slots = load_runner_config(arguments.config).concurrent
    except InputError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2

    execute = executor_for(docker.from_env(), arguments.config, arguments.sources, tuple(arguments.watch),
                           arguments.runner_version)
    serve(JobApi(arguments.url, token), execute, slots, threading.Event())
    return 0


if __name__ == "__main__":
    sys.exit(main())
