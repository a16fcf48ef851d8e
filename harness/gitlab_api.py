"""The part of GitLab's REST API that python-gitlab needs to run a pipeline and read its jobs.

Paths are relative to ``/api/v4``; the coordinator checks ``PRIVATE-TOKEN`` before it calls
:func:`handle`. The JSON fields are the ones GitLab documents for these endpoints that the
harness reads (``id``, ``status``, ``stage``, ``name``, ``allow_failure``, times, ``duration``).

NOTE: the coordinator serves one compiled pipeline per run, so only the first
``POST /projects/:id/pipeline`` creates one. Later ones get 400.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass

from harness.coordinator_jobs import JobState, iso_time


@dataclass(frozen=True)
class Reply:
    """Status and body of one read API reply; a ``bytes`` body is sent as plain text."""

    status: int
    body: object


_ROUTES = [
    ("GET", re.compile(r"^/projects/([^/]+)$"), "_project"),
    ("POST", re.compile(r"^/projects/([^/]+)/pipeline$"), "_create_pipeline"),
    ("GET", re.compile(r"^/projects/([^/]+)/pipelines/(\d+)$"), "_pipeline"),
    ("GET", re.compile(r"^/projects/([^/]+)/pipelines/(\d+)/jobs$"), "_pipeline_jobs"),
    ("GET", re.compile(r"^/projects/([^/]+)/jobs/(\d+)$"), "_job"),
    ("GET", re.compile(r"^/projects/([^/]+)/jobs/(\d+)/trace$"), "_trace"),
]


def handle(coordinator, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Reply:
    """Answer one read API request for ``coordinator``'s project and pipeline."""
    for route_method, pattern, name in _ROUTES:
        match = pattern.match(path)
        if match is None or route_method != method:
            continue
        if not _is_project(coordinator.project, match.group(1)):
            return Reply(404, {"message": "404 Project Not Found"})
        return globals()[name](coordinator, *match.groups()[1:], query=query, body=body)
    return Reply(404, {"message": "404 Not Found"})


def _is_project(project, key: str) -> bool:
    key = urllib.parse.unquote(key)
    return key == str(project.id) or key == project.path


def _project(coordinator, query, body) -> Reply:
    project = coordinator.project
    return Reply(200, {"id": project.id, "name": project.path.rsplit("/", 1)[-1],
                       "path": project.path.rsplit("/", 1)[-1], "path_with_namespace": project.path,
                       "default_branch": project.default_branch,
                       "web_url": f"{coordinator.url}/{project.path}"})


def _create_pipeline(coordinator, query, body) -> Reply:
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return Reply(400, {"message": "400 Bad request - the body is not JSON"})
    ref = (query.get("ref") or [None])[0] or (data.get("ref") if isinstance(data, dict) else None)
    queue = coordinator.queue
    if not ref:
        return Reply(400, {"message": "400 Bad request - ref is missing"})
    if ref != _pipeline_ref(queue):
        return Reply(400, {"message": {"base": [f"Reference not found: {ref}"]}})
    if queue.created:
        return Reply(400, {"message": {"base": ["this coordinator serves one pipeline per run, "
                                                "and it has been created"]}})
    queue.create()
    return Reply(201, _pipeline_json(coordinator))


def _pipeline(coordinator, pipeline_id: str, query, body) -> Reply:
    if not _is_pipeline(coordinator, pipeline_id):
        return Reply(404, {"message": "404 Not found"})
    return Reply(200, _pipeline_json(coordinator))


def _pipeline_jobs(coordinator, pipeline_id: str, query, body) -> Reply:
    if not _is_pipeline(coordinator, pipeline_id):
        return Reply(404, {"message": "404 Not found"})
    with coordinator.queue.lock:
        # GitLab lists the newest job first.
        jobs = [_job_json(coordinator, state) for state in reversed(list(coordinator.queue.states.values()))]
    return Reply(200, jobs)


def _job(coordinator, job_id: str, query, body) -> Reply:
    state = coordinator.queue.states.get(int(job_id))
    if state is None or not coordinator.queue.created:
        return Reply(404, {"message": "404 Not found"})
    with coordinator.queue.lock:
        return Reply(200, _job_json(coordinator, state))


def _trace(coordinator, job_id: str, query, body) -> Reply:
    state = coordinator.queue.states.get(int(job_id))
    if state is None or not coordinator.queue.created:
        return Reply(404, {"message": "404 Not found"})
    with coordinator.queue.lock:
        return Reply(200, bytes(state.trace))


def _is_pipeline(coordinator, pipeline_id: str) -> bool:
    return coordinator.queue.created and int(pipeline_id) == coordinator.queue.pipeline_id


def _pipeline_ref(queue) -> str:
    for state in queue.states.values():
        return state.job.payload["git_info"]["ref"]
    return ""


def _pipeline_json(coordinator) -> dict:
    queue = coordinator.queue
    git_info = next(iter(queue.states.values())).job.payload["git_info"] if queue.states else {}
    return {"id": queue.pipeline_id, "iid": 1, "project_id": coordinator.project.id,
            "status": queue.status(), "source": "push", "ref": git_info.get("ref", ""),
            "sha": git_info.get("sha", ""), "before_sha": git_info.get("before_sha", ""),
            "created_at": iso_time(queue.created_at),
            "web_url": f"{coordinator.url}/{coordinator.project.path}/-/pipelines/{queue.pipeline_id}"}


def _job_json(coordinator, state: JobState) -> dict:
    job = state.job
    git_info = job.payload["git_info"]
    return {
        "id": job.id, "name": job.name, "stage": job.stage, "status": state.status,
        "allow_failure": job.allow_failure, "when": job.when, "ref": git_info.get("ref", ""),
        "created_at": iso_time(state.created_at), "started_at": iso_time(state.started_at),
        "finished_at": iso_time(state.finished_at), "duration": state.duration,
        "failure_reason": state.failure_reason or None,
        "pipeline": {"id": coordinator.queue.pipeline_id, "project_id": coordinator.project.id,
                     "ref": git_info.get("ref", ""), "sha": git_info.get("sha", ""),
                     "status": coordinator.queue.status()},
        "web_url": f"{coordinator.url}/{coordinator.project.path}/-/jobs/{job.id}",
    }
