"""A built-in GitLab coordinator: the runner's job API, git over HTTP and a small read API.

Runners (the harness's own runner container, ``gitlab/gitlab-runner`` images through
``run-single``, other runner clients) talk to it exactly as to GitLab:

- ``POST /api/v4/jobs/request``: 201 with the job payload as JSON, 204 when no job is pending,
  403 for a wrong runner token.
- ``PUT /api/v4/jobs/:id``: ``state=running`` touches get 200. A final state gets 202 while the
  trace is shorter than the ``output.bytesize`` the runner reports, 412 when the trace has that
  size but another checksum, and 200 once it matches.
- ``PATCH /api/v4/jobs/:id/trace``: appends at the ``Content-Range`` start; 202 with
  ``Range: 0-<size>``; 416 with the same header when the start leaves a gap.
- ``POST /api/v4/runners/verify``: 200 with the runner id and token.
- ``/<namespace>/<project>.git/...``: git clone and fetch with ``gitlab-ci-token:<job token>``.

The read side (``harness/gitlab_api.py``) serves the calls python-gitlab makes to create a
pipeline, list its jobs and read a trace, authenticated by ``PRIVATE-TOKEN``.

The server listens on one address of this machine, by default the gateway of the Docker
bridge that the runner container uses, so containers reach it and other hosts do not.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from harness import git_http, gitlab_api
from harness.coordinator_jobs import FINISHED, JobState, PipelineQueue

log = logging.getLogger(__name__)

API = "/api/v4"
# Seconds a runner waits before it sends a final update again after a 202 (GitLab's default).
TRACE_UPDATE_INTERVAL = 3
_JOB_PATH = re.compile(rf"^{API}/jobs/(\d+)$")
_TRACE_PATH = re.compile(rf"^{API}/jobs/(\d+)/trace$")
_CONTENT_RANGE = re.compile(r"^(?:bytes )?(\d+)-(\d+)$")


@dataclass(frozen=True)
class ProjectInfo:
    """The one project the coordinator serves, and its git repository on this machine."""

    id: int
    path: str
    default_branch: str
    repo_dir: Path


class Coordinator:
    """The server and its state; ``start`` runs it in a daemon thread, ``close`` stops it."""

    def __init__(self, project: ProjectInfo, host: str = "127.0.0.1", port: int = 0,
                 runner_token: str | None = None, api_token: str | None = None) -> None:
        self.project = project
        # Replaced by ``serve`` once the pipeline is compiled against this server's URL.
        self.queue = PipelineQueue(0, [], [])
        self.runner_token = runner_token or f"glrt-{secrets.token_urlsafe(15)}"
        self.api_token = api_token or f"glpat-{secrets.token_urlsafe(15)}"
        self.server = ThreadingHTTPServer((host, port), _Handler)
        self.server.daemon_threads = True
        self.server.coordinator = self
        self.thread: threading.Thread | None = None
        # Requests served per endpoint, such as ``POST /jobs/request``: proof of who talked to it.
        self.requests: collections.Counter[str] = collections.Counter()
        self.requests_lock = threading.Lock()
        # time.monotonic() of the last request to a runner endpoint (``/api/v4/jobs/...``); None before the first.
        self.last_runner_request: float | None = None

    @property
    def url(self) -> str:
        """The base URL runners and python-gitlab use, ``http://<host>:<port>``."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, queue: PipelineQueue) -> None:
        """Serve ``queue``'s pipeline from now on."""
        self.queue = queue

    def start(self) -> "Coordinator":
        """Serve requests in a daemon thread until ``close``."""
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="coordinator", daemon=True)
        self.thread.start()
        log.info("coordinator listening on %s for project %s", self.url, self.project.path)
        return self

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join(timeout=10)
            self.thread = None
        self.server.server_close()

    def __enter__(self) -> "Coordinator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def job_for_token(self, token: str) -> JobState | None:
        """Return the running job whose job token is ``token``, or None."""
        with self.queue.lock:
            for state in self.queue.states.values():
                if state.status == "running" and secrets.compare_digest(state.job.token, token):
                    return state
        return None


class _Handler(BaseHTTPRequestHandler):
    server_version = "harness-coordinator"
    protocol_version = "HTTP/1.1"

    @property
    def coordinator(self) -> Coordinator:
        return self.server.coordinator

    def log_message(self, format: str, *args) -> None:
        log.debug("coordinator %s: %s", self.client_address[0], format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        body = self._read_body()
        with self.coordinator.requests_lock:
            self.coordinator.requests[f"{method} {_endpoint(path)}"] += 1
        if path.startswith(f"{API}/jobs"):
            self.coordinator.last_runner_request = time.monotonic()
        try:
            if ".git/" in path:
                self._git(method, path, url.query, body)
            elif method == "POST" and path == f"{API}/jobs/request":
                self._request_job(body)
            elif method == "POST" and path == f"{API}/runners/verify":
                self._verify_runner(body)
            elif method == "PUT" and _JOB_PATH.match(path):
                self._update_job(int(_JOB_PATH.match(path).group(1)), body)
            elif method == "PATCH" and _TRACE_PATH.match(path):
                self._patch_trace(int(_TRACE_PATH.match(path).group(1)), body)
            elif path.startswith(f"{API}/"):
                self._read_api(method, path, url.query, body)
            else:
                self._send_json(404, {"message": "404 Not Found"})
        except BrokenPipeError:
            log.debug("coordinator: %s closed the connection during %s %s", self.client_address[0], method, path)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunks()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunks(self) -> bytes:
        """Read a chunked request body, which git sends for requests above its ``http.postBuffer``."""
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if body or status not in (204, 304):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_json(self, status: int, data, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    # -- runner endpoints ------------------------------------------------------------------

    def _request_job(self, body: bytes) -> None:
        data = _json_or_none(body)
        if data is None:
            self._send_json(400, {"message": "400 Bad request - the body is not a JSON object"})
            return
        if not _same(data.get("token"), self.coordinator.runner_token):
            log.warning("coordinator: job request from %s with an invalid runner token rejected",
                        self.client_address[0])
            self._send_json(403, {"message": "403 Forbidden"})
            return

        state = self.coordinator.queue.next_pending()
        if state is None:
            self._send(204, headers={"X-GitLab-Last-Update": str(len(self.coordinator.queue.states))})
            return
        log.info("coordinator: job %s (%s) handed to runner %s", state.job.id, state.job.name,
                 _runner_name(data))
        self._send_json(201, state.job.payload)

    def _verify_runner(self, body: bytes) -> None:
        data = _json_or_none(body) or {}
        if not _same(data.get("token"), self.coordinator.runner_token):
            self._send_json(403, {"message": "403 Forbidden"})
            return
        self._send_json(200, {"id": 1, "token": self.coordinator.runner_token,
                              "token_expires_at": "0001-01-01T00:00:00Z"})

    def _job_for_request(self, job_id: int, token: str | None) -> JobState | None:
        """Return the job for a job endpoint, or send 404/403 the way GitLab does and return None."""
        state = self.coordinator.queue.states.get(job_id)
        if state is None:
            self._send_json(404, {"message": "404 Not Found"})
            return None
        if not _same(token, state.job.token):
            log.warning("coordinator: %s %s with an invalid job token rejected", self.command, self.path)
            self._send_json(403, {"message": "403 Forbidden"})
            return None
        if state.status != "running":
            # A runner aborts a job when GitLab sends 403 with the job's ``Job-Status``.
            self._send_json(403, {"message": "403 Forbidden - Job is not running"},
                            {"Job-Status": state.status})
            return None
        return state

    def _update_job(self, job_id: int, body: bytes) -> None:
        data = _json_or_none(body)
        if data is None:
            self._send_json(400, {"message": "400 Bad request - the body is not a JSON object"})
            return
        state = self._job_for_request(job_id, self.headers.get("JOB-TOKEN") or data.get("token"))
        if state is None:
            return

        status = data.get("state")
        if status == "running":
            self._send_json(200, "200", {"Job-Status": "running"})
            return
        if status not in ("success", "failed", "canceled"):
            self._send_json(400, {"message": f"400 Bad request - state {status!r} is not one of "
                                             "running, success, failed, canceled"})
            return

        output = data.get("output") or {}
        checksum = output.get("checksum") or data.get("checksum")
        size = output.get("bytesize")
        if isinstance(size, int) and size > len(state.trace):
            # Part of the trace has not arrived yet, so the runner sends it, waits and updates again.
            self._send_json(202, "202", {"Job-Status": "running",
                                         "X-GitLab-Trace-Update-Interval": str(TRACE_UPDATE_INTERVAL)})
            return
        if checksum and checksum != state.checksum():
            self._send_json(412, {"message": "412 Precondition Failed - the trace checksum does not match"},
                            {"Job-Status": "running"})
            return

        exit_code = data.get("exit_code")
        report = {key: value for key, value in data.items() if key not in ("info", "token", "output", "checksum")}
        self.coordinator.queue.finish(state, status, exit_code if isinstance(exit_code, int) else None,
                                      str(data.get("failure_reason") or ""), report)
        log.info("coordinator: job %s (%s) finished: %s", state.job.id, state.job.name, status)
        self._send_json(200, "200", {"Job-Status": status})

    def _patch_trace(self, job_id: int, body: bytes) -> None:
        state = self._job_for_request(job_id, self.headers.get("JOB-TOKEN"))
        if state is None:
            return
        match = _CONTENT_RANGE.match(self.headers.get("Content-Range", "").strip())
        if match is None:
            self._send_json(400, {"message": "400 Bad request - Content-Range must be <start>-<end>"})
            return

        start = int(match.group(1))
        with self.coordinator.queue.lock:
            size = len(state.trace)
            if start > size:
                self._send(416, headers={"Range": f"0-{size}", "Job-Status": "running"})
                return
            # A start before the end overwrites from there, as a runner that resends after a 412 does.
            del state.trace[start:]
            state.trace += body
            size = len(state.trace)
        self._send(202, headers={"Range": f"0-{size}", "Job-Status": "running",
                                 "X-GitLab-Trace-Update-Interval": str(TRACE_UPDATE_INTERVAL)})

    # -- git over HTTP ---------------------------------------------------------------------

    def _git(self, method: str, path: str, query: str, body: bytes) -> None:
        project = self.coordinator.project
        prefix = f"/{project.path}.git"
        if not path.startswith(prefix + "/"):
            self._send_json(404, {"message": "404 Project Not Found"})
            return
        user = self._job_token_user()
        if user is None:
            self._send(401, b"HTTP Basic: Access denied\n", "text/plain",
                       {"WWW-Authenticate": 'Basic realm="GitLab"'})
            return

        forwarded = {name: self.headers[name] for name in ("Content-Encoding", "Git-Protocol") if self.headers.get(name)}
        response = git_http.run_http_backend(git_http.git_directory(project.repo_dir), path[len(prefix):],
                                             method, query, self.headers.get("Content-Type", ""), body, user,
                                             forwarded)
        content_type = "application/octet-stream"
        headers = {}
        for name, value in response.headers:
            if name.lower() == "content-type":
                content_type = value
            elif name.lower() != "content-length":
                headers[name] = value
        self._send(response.status, response.body, content_type, headers)

    def _job_token_user(self) -> str | None:
        """Return the Basic auth user when its password is a running job's token, else None."""
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if user != git_http.JOB_TOKEN_USER or self.coordinator.job_for_token(password) is None:
            return None
        return user

    # -- read API for python-gitlab ----------------------------------------------------------

    def _read_api(self, method: str, path: str, query: str, body: bytes) -> None:
        if not _same(self.headers.get("PRIVATE-TOKEN"), self.coordinator.api_token):
            self._send_json(401, {"message": "401 Unauthorized"})
            return
        reply = gitlab_api.handle(self.coordinator, method, path[len(API):], urllib.parse.parse_qs(query), body)
        if isinstance(reply.body, bytes):
            self._send(reply.status, reply.body, "text/plain; charset=utf-8")
        else:
            self._send_json(reply.status, reply.body)


def _endpoint(path: str) -> str:
    """Return ``path`` with job ids replaced by ``:id`` and git paths reduced to ``git``."""
    if ".git/" in path:
        return "git"
    return re.sub(r"/\d+(?=/|$)", "/:id", path.removeprefix(API))


def _json_or_none(body: bytes) -> dict | None:
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _same(given, expected: str) -> bool:
    return isinstance(given, str) and secrets.compare_digest(given.encode(), expected.encode())


def _runner_name(data: dict) -> str:
    info = data.get("info") or {}
    return f"{info.get('name', '?')} {info.get('version', '?')}"


__all__ = ["Coordinator", "FINISHED", "ProjectInfo", "PipelineQueue"]
