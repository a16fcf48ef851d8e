"""The outcome of one job as the executor reports it."""

from __future__ import annotations

import dataclasses

SUCCESS = "success"
FAILED = "failed"


@dataclasses.dataclass
class JobResult:
    """Outcome of one job and the resources it created.

    Attributes:
        status: ``success`` or ``failed``.
        exit_code: Exit code of the failing script step, None for success or a system failure.
        failure_reason: ``script_failure``, ``job_execution_timeout`` or ``runner_system_failure``.
        trace: The complete masked job log, with ANSI colours and section markers.
        fault: One line naming what broke under a failed job, such as a service container that
            exited during it; "" when nothing did.
        containers: ``{"id", "name", "type"}`` of every container the job created, all removed
            at cleanup; ``type`` is build, predefined or service.
        volumes: ``{"name", "destination", "reusable", "new", "removed"}`` of every Docker volume
            the job created or reused; reusable cache volumes are kept.
        networks: ``{"id", "name", "removed"}`` of the per-build network, if one was created.
        services: ``ServiceInfo.to_dict()`` of every service container.
        timings: Seconds spent per stage (``prepare_executor``, ``step_script`` ...).
    """

    status: str
    exit_code: int | None
    failure_reason: str
    trace: str
    fault: str = ""
    job_id: int = 0
    project_dir: str = ""
    container_prefix: str = ""
    network_mode: str = ""
    containers: list[dict] = dataclasses.field(default_factory=list)
    volumes: list[dict] = dataclasses.field(default_factory=list)
    networks: list[dict] = dataclasses.field(default_factory=list)
    services: list[dict] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        """True when the job succeeded."""
        return self.status == SUCCESS

    def to_dict(self) -> dict:
        """Return the result as plain JSON data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> JobResult:
        """Rebuild a result from ``to_dict()`` output, for example a ``--result`` file."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})
