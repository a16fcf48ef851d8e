"""Labels the runner stamps on what a job creates, plus the harness's own managed labels."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from harness import labels as harness_labels

PREFIX = "com.gitlab.gitlab-runner"
TYPE = f"{PREFIX}.type"


def go_duration(seconds: int) -> str:
    """Format whole seconds as Go's ``time.Duration.String`` does (3600 -> ``1h0m0s``)."""
    if seconds < 60:
        return f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def project_url(repo_url: str) -> str:
    """Return the project web URL of a clone URL: credentials and a ``.git`` suffix removed."""
    parts = urllib.parse.urlsplit(repo_url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    path = parts.path[: -len(".git")] if parts.path.endswith(".git") else parts.path
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))


class Labeler:
    """Produces the ``com.gitlab.gitlab-runner.*`` labels of one job plus the harness labels."""

    def __init__(self, payload: Mapping, runner_short: str, system_id: str, concurrent_id: int,
                 pipeline_id: str, timeout: int, runner_local_id: int = 0) -> None:
        git = payload.get("git_info") or {}
        job_info = payload.get("job_info") or {}
        self.job_id = str(payload.get("id", 0))
        self._common = {
            f"{PREFIX}.job.id": self.job_id,
            f"{PREFIX}.job.url": f"{project_url(git.get('repo_url', ''))}/-/jobs/{self.job_id}",
            f"{PREFIX}.job.sha": git.get("sha", ""),
            f"{PREFIX}.job.before_sha": git.get("before_sha", ""),
            f"{PREFIX}.job.ref": git.get("ref", ""),
            f"{PREFIX}.job.timeout": go_duration(timeout),
            f"{PREFIX}.project.id": str(job_info.get("project_id", 0)),
            f"{PREFIX}.project.runner_id": str(concurrent_id),
            f"{PREFIX}.pipeline.id": pipeline_id,
            f"{PREFIX}.runner.id": runner_short,
            f"{PREFIX}.runner.local_id": str(runner_local_id),
            f"{PREFIX}.runner.system_id": system_id,
            f"{PREFIX}.managed": "true",
        }

    def labels(self, resource_type: str, **other: str) -> dict[str, str]:
        """Return the labels for a resource of runner type ``resource_type`` (build, service ...).

        Keyword arguments become ``com.gitlab.gitlab-runner.<key>`` labels; ``service_version``
        is written ``service.version``, the runner's spelling.
        """
        result = dict(self._common)
        result[TYPE] = resource_type
        for key, value in other.items():
            result[f"{PREFIX}.{key.replace('_', '.')}"] = value
        result.update(harness_labels.managed_labels("job", job_id=self.job_id, role=resource_type))
        return result
