"""The pipeline state the built-in coordinator serves: job queue, stage gating, traces, states.

GitLab creates every job of a pipeline at once but hands a job to a runner only when all jobs
of the earlier stages have finished. A job then runs when its ``when`` matches the outcome so
far: ``on_success`` after no failure, ``on_failure`` after a failure, ``always`` in both cases.
A failure counts only when the failed job does not have ``allow_failure``. Jobs that will not run
become ``skipped`` (``manual`` for ``when: manual``). The state is guarded by one lock because
the HTTP server handles each request in its own thread.
"""

from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from harness.pipeline import CompiledJob

# GitLab's job states that end a job.
FINISHED = ("success", "failed", "canceled", "skipped", "manual")


@dataclass
class JobState:
    """One job of the served pipeline, as GitLab tracks it."""

    job: CompiledJob
    status: str = "created"
    trace: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    failure_reason: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    # Whatever extra fields the runner sent with its final update (the harness's own runner
    # sends its executor result there; GitLab ignores unknown fields).
    report: dict = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, or None while the job has not finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def checksum(self) -> str:
        """Return the trace's checksum in the runner's format, ``crc32:<8 hex>``."""
        return f"crc32:{zlib.crc32(bytes(self.trace)):08x}"


class PipelineQueue:
    """The jobs of one pipeline and their states; the coordinator's only mutable state.

    ``selected`` limits which jobs may run (the CLI's ``--job``); the others are skipped.
    ``on_finished`` is called with the job state after a runner's final update and before the
    runner gets the reply, so the harness can look at the engine before the runner's next job.
    """

    def __init__(self, pipeline_id: int, stages: list[str], jobs: list[CompiledJob],
                 selected: tuple[str, ...] = (),
                 on_finished: Callable[[JobState], None] | None = None) -> None:
        self.pipeline_id = pipeline_id
        self.stages = list(stages)
        self.states = {job.id: JobState(job) for job in jobs}
        self.selected = tuple(selected)
        self.on_finished = on_finished
        self.lock = threading.RLock()
        self.created = False
        self.created_at: float | None = None

    def create(self) -> None:
        """Start the pipeline (as ``POST /projects/:id/pipeline`` does): open its first stage."""
        with self.lock:
            if self.created:
                return
            self.created = True
            self.created_at = time.time()
            self._open_next_stage()

    def next_pending(self) -> JobState | None:
        """Hand out the first pending job and mark it running; None when no job is pending."""
        with self.lock:
            for state in self.states.values():
                if state.status == "pending":
                    state.status = "running"
                    state.started_at = time.time()
                    return state
        return None

    def finish(self, state: JobState, status: str, exit_code: int | None, failure_reason: str,
               report: dict) -> None:
        """Record a runner's final state for ``state``'s job, then open the next stage if it is due."""
        # on_finished runs under the lock: a reader that saw the job finished before its host
        # snapshot was taken could start the teardown, which removes what the snapshot should show.
        with self.lock:
            state.status = status
            state.exit_code = exit_code
            state.failure_reason = failure_reason if status == "failed" else ""
            state.finished_at = time.time()
            state.report = report
            if self.on_finished is not None:
                self.on_finished(state)
            self._open_next_stage()

    def abort(self) -> list[JobState]:
        """Cancel every job that has not finished (created, pending or running); return them.

        A runner that still works on a canceled job gets 403 with ``Job-Status: canceled`` on its
        next trace or state update, and no job is handed out any more.
        """
        with self.lock:
            canceled = [state for state in self.states.values() if state.status not in FINISHED]
            for state in canceled:
                state.status = "canceled"
                state.finished_at = time.time()
        return canceled

    def status(self) -> str:
        """Return the pipeline status as GitLab computes it from its jobs."""
        with self.lock:
            statuses = [state.status for state in self.states.values()]
            if not self.created:
                return "created"
            if any(status == "running" for status in statuses):
                return "running"
            if any(status in ("pending", "created") for status in statuses):
                return "running" if any(s in FINISHED for s in statuses) else "pending"
            if self._failed():
                return "failed"
            if "canceled" in statuses:
                return "canceled"
            return "success" if any(status == "success" for status in statuses) else "skipped"

    def _failed(self) -> bool:
        return any(state.status == "failed" and not state.job.allow_failure for state in self.states.values())

    def _open_next_stage(self) -> None:
        """Make the jobs of the first unfinished stage pending or skipped, once earlier stages are done."""
        for stage in self.stages:
            jobs = [state for state in self.states.values() if state.job.stage == stage]
            if any(state.status in ("pending", "running") for state in jobs):
                return
            waiting = [state for state in jobs if state.status == "created"]
            if not waiting:
                continue

            failed = self._failed()
            for state in waiting:
                state.status = self._opening_status(state.job, failed)
                if state.status in ("skipped", "manual"):
                    state.finished_at = time.time()
            if any(state.status == "pending" for state in waiting):
                return

    def _opening_status(self, job: CompiledJob, failed: bool) -> str:
        if self.selected and job.name not in self.selected:
            return "skipped"
        if job.when == "manual":
            return "manual"
        if job.when == "never":
            return "skipped"
        if job.when == "always":
            return "pending"
        if job.when == "on_failure":
            return "pending" if failed else "skipped"
        return "skipped" if failed else "pending"


def iso_time(epoch: float | None) -> str | None:
    """Return ``epoch`` as GitLab writes times in its API (ISO 8601, UTC, milliseconds)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
