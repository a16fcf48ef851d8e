"""The runner's side of GitLab's job API: request a job, upload its trace, report its final state.

The calls and their responses follow gitlab-runner's ``network/gitlab.go``. ``POST
/api/v4/jobs/request`` returns 201 with a job or 204. ``PATCH /api/v4/jobs/:id/trace`` sends bytes
at an inclusive ``Content-Range`` and gets 202 with ``Range: 0-<size>``, or 416 with the offset to
resend from. ``PUT /api/v4/jobs/:id`` with the final state gets 200 when done, 202 while trace is
missing and 412 when the checksum differs. The module runs inside the runner container, whose
image has Debian's Python with requests, and inside the harness process for
``--debug-in-process``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import zlib

import requests

from harness import __version__
from harness.variables import mask

log = logging.getLogger(__name__)

# Seconds between trace uploads while a job runs; gitlab-runner uses 3 s, which would make
# short jobs wait for their trace.
UPLOAD_INTERVAL = 1.0
# Seconds the final update keeps retrying before the job is given up.
FINAL_UPDATE_SECONDS = 600
_RANGE = re.compile(r"^0-(\d+)$")

RUNNER_INFO = {"name": "dind-dood-harness", "version": __version__, "platform": "linux",
               "executor": "docker", "shell": "bash",
               "features": {"variables": True, "image": True, "services": True, "trace_reset": True,
                            "trace_checksum": True, "trace_size": True, "cancelable": False}}


class JobApiError(Exception):
    """The coordinator returned a status to a job API call that the runner cannot act on."""


class JobApi:
    """HTTP calls of one runner to one coordinator, authenticated by the runner token."""

    def __init__(self, url: str, runner_token: str, timeout: float = 30.0) -> None:
        self.base = url.rstrip("/") + "/api/v4"
        self.runner_token = runner_token
        self.timeout = timeout
        self.http = requests.Session()

    def request_job(self) -> dict | None:
        """Ask for the next pending job (``POST /jobs/request``); return it, or None when none is pending.

        Raises:
            JobApiError: the coordinator rejected the runner token or returned another status.
            requests.RequestException: the coordinator is unreachable.
        """
        response = self.http.post(f"{self.base}/jobs/request", timeout=self.timeout,
                                  headers={"RUNNER-TOKEN": self.runner_token},
                                  json={"info": RUNNER_INFO, "token": self.runner_token})
        if response.status_code == 201:
            return response.json()
        if response.status_code == 204:
            return None
        raise JobApiError(f"POST {self.base}/jobs/request returned {response.status_code}")

    def update(self, job: dict, body: dict, timeout: float | None = None) -> requests.Response:
        """Send a job state (``PUT /jobs/:id``) and return the coordinator's response."""
        return self.http.put(f"{self.base}/jobs/{job['id']}", json={"token": job["token"], **body},
                             headers={"JOB-TOKEN": job["token"]}, timeout=timeout or self.timeout)

    def patch_trace(self, job: dict, start: int, data: bytes) -> requests.Response:
        """Send trace bytes that begin at byte ``start`` (``PATCH /jobs/:id/trace``)."""
        return self.http.patch(f"{self.base}/jobs/{job['id']}/trace", data=data, timeout=self.timeout,
                               headers={"JOB-TOKEN": job["token"], "Content-Type": "text/plain",
                                        "Content-Range": f"{start}-{start + len(data) - 1}"})


class TraceUpload:
    """A job's trace as a writable text stream, masked line by line and uploaded with PATCH.

    Masked values never leave the runner in clear: a line is masked once it is complete, and a
    partial last line waits until its newline or ``close``. A masked value contains no newline
    (GitLab rejects such values), so masking per line finds every occurrence. A background
    thread uploads new bytes every ``UPLOAD_INTERVAL`` seconds.
    """

    def __init__(self, api: JobApi, job: dict, secrets: list[str]) -> None:
        self.api = api
        self.job = job
        self.secrets = [secret for secret in secrets if secret]
        self.masked = bytearray()
        self.sent = 0
        self.canceled = False
        self._pending = ""
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._upload_regularly, name=f"trace-{job['id']}", daemon=True)

    def start(self) -> "TraceUpload":
        """Start the background upload."""
        self._thread.start()
        return self

    def write(self, text: str) -> int:
        """Add output; complete lines are masked and queued for upload."""
        with self._lock:
            complete, newline, self._pending = (self._pending + text).rpartition("\n")
            if newline:
                self.masked += mask(complete + "\n", self.secrets).encode()
        return len(text)

    def flush(self) -> None:
        """Do nothing: complete lines are already queued, and the thread uploads them."""

    def close(self) -> None:
        """Mask the partial last line, stop the background upload and send everything left."""
        with self._lock:
            if self._pending:
                self.masked += mask(self._pending, self.secrets).encode()
                self._pending = ""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.send()

    def checksum(self) -> str:
        """Return the uploaded trace's checksum in the runner's format, ``crc32:<8 hex>``."""
        with self._lock:
            return f"crc32:{zlib.crc32(bytes(self.masked)):08x}"

    def size(self) -> int:
        """Return the trace's length in bytes."""
        with self._lock:
            return len(self.masked)

    def send(self, start: int | None = None) -> None:
        """Upload the bytes after what the coordinator has, or from ``start`` (0 after a 412)."""
        with self._send_lock:
            if start is not None:
                self.sent = start
            while not self.canceled:
                with self._lock:
                    data = bytes(self.masked[self.sent:])
                if not data:
                    return
                try:
                    response = self.api.patch_trace(self.job, self.sent, data)
                except requests.RequestException as error:
                    log.warning("trace upload of job %s failed, retried later: %s", self.job["id"], error)
                    return
                if not self._accept(response, len(data)):
                    return

    def _accept(self, response: requests.Response, length: int) -> bool:
        """Move the sent offset to the ``Range`` of the coordinator's reply; return whether to send again."""
        match = _RANGE.match(response.headers.get("Range", ""))
        if response.status_code in (202, 416) and match:
            self.sent = int(match.group(1))
            return True
        if response.status_code == 403:
            # The job is no longer running on the coordinator (canceled or finished).
            log.warning("trace upload of job %s rejected: the job is %s", self.job["id"],
                        response.headers.get("Job-Status", "not running"))
            self.canceled = True
            return False
        log.warning("trace upload of job %s returned %s, retried later", self.job["id"], response.status_code)
        return False

    def _upload_regularly(self) -> None:
        while not self._stop.wait(UPLOAD_INTERVAL):
            self.send()


def report_final_state(api: JobApi, job: dict, trace: TraceUpload, body: dict) -> bool:
    """Send the job's final state until the coordinator accepts it; return whether it did.

    ``body`` contains ``state`` and optional fields (``exit_code``, ``failure_reason``, extra
    fields the coordinator keeps as the job's report). The trace checksum and size are added.
    """
    deadline = time.monotonic() + FINAL_UPDATE_SECONDS
    while time.monotonic() < deadline:
        checksum = trace.checksum()
        full = {**body, "checksum": checksum, "output": {"checksum": checksum, "bytesize": trace.size()}}
        try:
            # The coordinator snapshots the engine before it replies, so the wait is longer.
            response = api.update(job, full, timeout=FINAL_UPDATE_SECONDS)
        except requests.RequestException as error:
            log.warning("final update of job %s failed, retrying: %s", job["id"], error)
            time.sleep(3)
            continue
        if response.status_code == 200:
            return True
        if response.status_code == 202:
            trace.send()
            time.sleep(float(response.headers.get("X-GitLab-Trace-Update-Interval") or 3))
        elif response.status_code == 412:
            trace.send(start=0)
        elif response.status_code in (403, 404):
            log.warning("final update of job %s rejected with %s; the coordinator dropped the job",
                        job["id"], response.status_code)
            return False
        else:
            log.warning("final update of job %s returned %s, retrying", job["id"], response.status_code)
            time.sleep(3)
    log.error("final update of job %s not accepted within %d s", job["id"], FINAL_UPDATE_SECONDS)
    return False
