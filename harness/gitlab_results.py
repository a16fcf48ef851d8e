"""Pipelines and job results read through python-gitlab, from the built-in coordinator or a real GitLab.

The same calls work against both: create a pipeline for a project and ref, wait until it has
finished, then list its jobs with their status and read each job's trace. For a real GitLab
instance pass its URL and a token with the ``api`` scope (the CLI reads it from
``GITLAB_TOKEN``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

import gitlab

log = logging.getLogger(__name__)

# Pipeline states after which no job of it changes any more.
FINISHED_PIPELINE = ("success", "failed", "canceled", "skipped")


@dataclass(frozen=True)
class JobRecord:
    """One job of a pipeline as the GitLab API reports it."""

    id: int
    name: str
    stage: str
    status: str
    allow_failure: bool
    duration: float
    started_at: float
    trace: str


class PipelineReader:
    """One pipeline on a GitLab server, created and read through python-gitlab."""

    def __init__(self, url: str, token: str, project: int | str) -> None:
        self.gitlab = gitlab.Gitlab(url, private_token=token, timeout=30)
        self.project = self.gitlab.projects.get(project, lazy=True)
        self.pipeline = None

    def create(self, ref: str) -> int:
        """Create a pipeline for ``ref`` (``POST /projects/:id/pipeline``); return its id."""
        self.pipeline = self.project.pipelines.create({"ref": ref})
        log.info("pipeline %s created for %s at %s", self.pipeline.id, ref, self.gitlab.url)
        return self.pipeline.id

    def status(self) -> str:
        """Read the pipeline again (``GET /projects/:id/pipelines/:id``); return its status."""
        self.pipeline.refresh()
        return self.pipeline.status

    def wait(self, timeout: float, interval: float = 1.0) -> str:
        """Poll the pipeline until it has finished; return its final status.

        Raises:
            TimeoutError: the pipeline has not finished after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.pipeline.refresh()
            if self.pipeline.status in FINISHED_PIPELINE:
                return self.pipeline.status
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipeline {self.pipeline.id} is still {self.pipeline.status} "
                                   f"after {timeout:.0f} s")
            time.sleep(interval)

    def jobs(self) -> list[JobRecord]:
        """Return the pipeline's jobs in creation order, each with its trace."""
        records = []
        for listed in sorted(self.pipeline.jobs.list(get_all=True), key=lambda job: job.id):
            job = self.project.jobs.get(listed.id, lazy=True)
            trace = job.trace().decode(errors="replace") if listed.started_at else ""
            records.append(JobRecord(listed.id, listed.name, listed.stage, listed.status,
                                     bool(listed.allow_failure), float(listed.duration or 0.0),
                                     _epoch(listed.started_at), trace))
        return records


def _epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
