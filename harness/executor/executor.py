"""``DockerExecutor``: runs one GitLab job payload on a Docker engine as GitLab Runner's docker executor.

Stages, in order: prepare (network, volumes, services, images), ``prepare_script`` and
``get_sources`` in the predefined container, each script step and ``after_script`` in the build
container, ``cleanup_file_variables``, then cleanup of everything but reusable cache volumes.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Protocol, TextIO

import docker.errors
import requests

from harness.errors import HarnessError
from harness.executor import cleanup, script, sources, stages
from harness.executor import volumes as volumes_module
from harness.executor.compat import RunnerCompat
from harness.executor.containers import StageTimeout
from harness.executor.job import JobContext, build_context
from harness.executor.networks import NetworkManager
from harness.executor.pull import ImagePuller
from harness.executor.result import FAILED, SUCCESS, JobResult
from harness.executor.runner_labels import Labeler
from harness.executor.service_wait import ServiceWaiter
from harness.executor.services import ServiceDefinition, ServiceInfo, ServiceManager, ServiceSettings
from harness.executor.settings import ExecutorSettings
from harness.executor.trace import ANSI_BOLD_GREEN, ANSI_BOLD_RED, Trace
from harness.executor.volumes import VolumeManager, VolumeSettings

log = logging.getLogger(__name__)

AFTER_SCRIPT_TIMEOUT = 300


class JobObserver(Protocol):
    """Hooks the placement module uses to look into a job's daemons while they still exist.

    Every hook runs in the executor's thread and blocks the job until it returns. An exception
    from a hook stops the job; cleanup still runs, then ``DockerExecutor.run`` re-raises it.

    ``job_started(context)`` runs before anything is created: the moment for a baseline.
    ``services_ready(context, services)`` runs after every service started and its health check
    finished, before any script: each ``ServiceInfo`` has ``container_id``, ``aliases`` and
    ``ip``, so a dind daemon can be read with ``docker exec <container_id> docker ...``.
    ``before_cleanup(context, services, build_container)`` runs after the last stage, while the
    services and the build container (its id, or None when none was created) still exist.
    """

    def job_started(self, context: JobContext) -> None: ...

    def services_ready(self, context: JobContext, services: list[ServiceInfo]) -> None: ...

    def before_cleanup(self, context: JobContext, services: list[ServiceInfo], build_container: str | None) -> None: ...


class _JobFailed(Exception):
    def __init__(self, exit_code: int | None, reason: str, message: str) -> None:
        self.exit_code = exit_code
        self.reason = reason
        super().__init__(message)


class DockerExecutor:
    """Runs job payloads on one engine with one runner's settings.

    Args:
        client: A ``docker.DockerClient`` (docker-py 5.0.3 or 7.x) for the engine to run on.
        config: A ``RunnerConfig``, a config.toml-shaped dict, or ``ExecutorSettings``.
        compat: The GitLab Runner version to behave like; the current runner by default.
        observer: Optional ``JobObserver``.
        runner: Name of the ``[[runners]]`` entry when ``config`` has several.
    """

    def __init__(self, client, config, compat: RunnerCompat | None = None, observer: JobObserver | None = None,
                 runner: str | None = None) -> None:
        self.client = client
        self.settings = config if isinstance(config, ExecutorSettings) else ExecutorSettings.from_config(config, runner)
        self.compat = compat or RunnerCompat()
        self.observer = observer

    def run(self, payload: dict, sources_path: Path | str | None, trace_stream: TextIO | None = None,
            concurrent_id: int = 0) -> JobResult:
        """Run one job: create its containers, volumes and network, run its steps, clean up.

        Args:
            payload: The job as GitLab's ``POST /jobs/request`` returns it.
            sources_path: The project's git work tree or bare repository; unused with
                ``GIT_STRATEGY: none``.
            trace_stream: Receives the job log as it is written.
            concurrent_id: The runner's job slot (0 to ``concurrent`` - 1), part of every name.

        Returns:
            The job's ``JobResult``; a failing script is a result, not an exception.

        Raises:
            Exception: whatever an observer hook raised, after cleanup.
        """
        context = build_context(self.client, payload, self.settings, self.compat, concurrent_id=concurrent_id)
        trace = Trace(trace_stream, context.variables.masked_values())
        run = _JobRun(self, context, trace, Path(sources_path) if sources_path else None)
        return run.execute()


class _JobRun:
    """The state of one job while it runs."""

    def __init__(self, executor: DockerExecutor, context: JobContext, trace: Trace, sources_path: Path | None) -> None:
        self.executor = executor
        self.context = context
        self.trace = trace
        self.sources_path = sources_path
        self.client = context.client
        settings = context.settings
        variables = context.variables
        self.labeler = Labeler(context.payload, context.short_token, settings.system_id, context.concurrent_id,
                               variables.get("CI_PIPELINE_ID"), context.timeout)
        self.puller = ImagePuller(self.client, list(settings.pull_policy), trace)
        self.network = NetworkManager(self.client, self.labeler, settings.network_mode, context.per_build_network,
                                      context.network_name, settings.network_mtu, settings.enable_ipv6)
        self.volumes = VolumeManager(self.client, self.labeler, VolumeSettings(
            reusable_name=context.reusable_name, prefix=context.prefix, project_dir=context.project_dir,
            helper_image=settings.helper_image, disable_cache=settings.disable_cache, protected=context.protected,
            cache_dir=settings.docker_cache_dir, config_file=settings.config_file))
        self.services = ServiceManager(self.client, self.labeler, trace, self.puller, self.network, ServiceSettings(
            privileged=settings.services_privileged_flag(),
            allowed_privileged_services=settings.allowed_privileged_services,
            extra_hosts=settings.extra_hosts, dns=settings.dns,
            wait_timeout=settings.wait_for_services_timeout), context.prefix)
        self.job_containers: stages.JobContainers | None = None
        self.timings: dict[str, float] = {}

    def execute(self) -> JobResult:
        """Run every stage, clean up, write the final status line and return the result."""
        failure: _JobFailed | None = None
        hook_error: BaseException | None = None
        self._write_header()
        try:
            self._call_hook("job_started", self.context)
            self._timed("prepare_executor", self._prepare)
            self._call_hook("services_ready", self.context, self.services.services)
            failure = self._run_stages()
        except _JobFailed as error:
            failure = error
        except (HarnessError, docker.errors.DockerException, requests.exceptions.RequestException) as error:
            failure = _JobFailed(None, "runner_system_failure", str(error))
        except _HookError as error:
            hook_error = error.__cause__
            failure = _JobFailed(None, "runner_system_failure", str(error))
        finally:
            fault = self._service_fault() if failure is not None else ""
            hook_error = self._cleanup() or hook_error

        if fault:
            failure = _JobFailed(failure.exit_code, failure.reason, f"{failure}, because the {fault}")
        self._write_status(failure)
        if hook_error is not None:
            raise hook_error
        return self._result(failure, fault)

    def _service_fault(self) -> str:
        """Write each service that stopped under a failed job to the trace, and return one line naming them.

        A killed dind daemon makes the job's ``docker`` commands fail with a bare "connection
        refused", so the trace also shows the service's last log lines. This runs before cleanup,
        while the service containers still exist. "" means that every service still runs.
        """
        try:
            exits = self.services.exited()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            log.warning("reading the state of the job's services failed: %s", error)
            return ""
        for service_exit in exits:
            self.trace.line(f"ERROR: {service_exit.describe()}", ANSI_BOLD_RED)
            self.trace.write("".join(f"  {line}\n" for line in service_exit.log_tail.splitlines()))
        return "; ".join(service_exit.describe() for service_exit in exits)

    def _call_hook(self, name: str, *args) -> None:
        method = getattr(self.executor.observer, name, None)
        if method is None:
            return
        try:
            method(*args)
        except Exception as error:
            raise _HookError(name) from error

    def _timed(self, stage: str, function, *args):
        started = time.monotonic()
        try:
            return function(*args)
        finally:
            self.timings[stage] = round(time.monotonic() - started, 3)

    def _write_header(self) -> None:
        settings = self.context.settings
        self.trace.line(f"Running with gitlab-runner {self.context.compat.version} (harness)")
        self.trace.line(f"  on {settings.name} {self.context.short_token}, system ID: {settings.system_id}")

    def _prepare(self) -> None:
        """Create the network, volumes and services and check every image, as ``Prepare`` does."""
        context, settings = self.context, self.context.settings
        self.trace.section_start("prepare_executor", 'Preparing the "docker" executor')
        if not context.image:
            raise HarnessError("the job has no image and [runners.docker] image is not set; set one of them")
        self.trace.line(f"Using Docker executor with image {context.image} ...")

        context.network_mode = self.network.create()
        for entry in settings.volumes:
            self.volumes.add(entry)
        self.volumes.add_builds_volume(settings.builds_dir, context.strategy)

        helper = self.puller.ensure(settings.helper_image)
        definitions = [ServiceDefinition.from_mapping(entry) for entry in settings.services]
        definitions += [ServiceDefinition.from_mapping(entry) for entry in context.payload.get("services") or ()]
        services = self.services.start_all(definitions, context.variables, self._service_binds())
        for info in services:
            context.containers.append({"id": info.container_id, "name": info.container_name, "type": "service"})
        ServiceWaiter(self.client, self.labeler, self.trace, self.network, settings.helper_image,
                      context.compat.legacy_links).wait(services, settings.wait_for_services_timeout)

        self.puller.ensure(context.image)
        self.job_containers = stages.JobContainers(context, self.trace, self.labeler, self.network,
                                                   self.volumes.binds, self.sources_path, helper["Id"])
        self.job_containers.reach_services(*self._service_reachability())
        self.trace.section_end("prepare_executor")

    def _service_binds(self) -> list[str]:
        """Return the binds services get: all of the job's, unless the builds volume is withheld.

        GitLab Runner always gives services the builds volume. ``share_builds_with_services =
        false`` reproduces CI emulators that do not, where a dind daemon cannot see the checkout.
        """
        if self.context.settings.share_builds_with_services:
            return self.volumes.binds
        return volumes_module.without_path(self.volumes.binds, self.context.settings.builds_dir)

    def _service_reachability(self) -> tuple[list[str], list[tuple[str, str]]]:
        if self.context.compat.legacy_links:
            return [], self.services.links() if self.network.default_bridge else []
        return self.services.host_entries(), []

    def _run_stages(self) -> _JobFailed | None:
        """Run the helper stages and the script steps; return the failure that stopped the job."""
        context = self.context
        self._timed("prepare_script", self._stage, "prepare_script", "Preparing environment", "predefined",
                    f'echo "Running on $(hostname) via {socket.gethostname()}..."\n', None)
        if context.strategy != "none" and self.sources_path is None:
            raise HarnessError("the job needs its git repository, but no sources directory was given; "
                               "pass --sources or set GIT_STRATEGY to none")
        body = sources.get_sources_body(context.project_dir, context.strategy, context.payload.get("git_info") or {},
                                        stages.exports(context.variables, self._temp_dir))
        self._timed("get_sources", self._stage, "get_sources", "Getting source from Git repository", "predefined",
                    body, None)

        failure = self._run_steps()
        self._timed("after_script", self._after_script, failure)
        try:
            self._timed("cleanup_file_variables", self._stage, "cleanup_file_variables",
                        "Cleaning up project directory and file based variables", "predefined",
                        f"rm -rf {script.quote(self._temp_dir)}\n", None)
        except _JobFailed as error:
            self.trace.warning(f"cleaning up file based variables failed: {error}")
        return failure

    @property
    def _temp_dir(self) -> str:
        return self.context.project_dir + ".tmp"

    def _run_steps(self) -> _JobFailed | None:
        deadline = time.monotonic() + self.context.timeout
        for step in self.context.payload.get("steps") or ():
            if step.get("name") == "after_script":
                continue
            stage = f"step_{step.get('name', 'script')}"
            body = script.user_script_body(stages.exports(self.context.variables, self._temp_dir),
                                           self.context.project_dir, list(step.get("script") or ()))
            header = f'Executing "{stage}" stage of the job script'
            try:
                self._timed(stage, self._stage, stage, header, "build", body, max(deadline - time.monotonic(), 1))
            except _JobFailed as failure:
                return failure
        return None

    def _after_script(self, failure: _JobFailed | None) -> None:
        """Run ``after_script`` with ``CI_JOB_STATUS`` set; its failure never fails the job."""
        steps = [step for step in self.context.payload.get("steps") or () if step.get("name") == "after_script"]
        commands = [command for step in steps for command in step.get("script") or ()]
        if not commands:
            return
        status = "success" if failure is None else "failed"
        exports = stages.exports(self.context.variables, self._temp_dir)
        exports.append(f"export CI_JOB_STATUS={status}")
        body = script.user_script_body(exports, self.context.project_dir, commands)
        timeout = int(steps[0].get("timeout") or AFTER_SCRIPT_TIMEOUT)
        try:
            self._stage("after_script", "Running after_script", "build", body, timeout)
        except _JobFailed as error:
            self.trace.warning(f"after_script failed, but job will continue unaffected: {error}")

    def _stage(self, name: str, header: str, kind: str, body: str, timeout: float | None) -> None:
        """Run one stage in a section; raise ``_JobFailed`` on a non-zero exit or a timeout."""
        self.trace.section_start(name, header)
        try:
            exit_code = self.job_containers.run(kind, body, timeout)
        except StageTimeout as error:
            raise _JobFailed(None, "job_execution_timeout", str(error)) from error
        finally:
            self.trace.section_end(name)
        if exit_code != 0:
            reason = "script_failure" if kind == "build" else "runner_system_failure"
            raise _JobFailed(exit_code, reason, f"exit code {exit_code}")

    def _cleanup(self) -> BaseException | None:
        """Call ``before_cleanup``, then remove containers, temporary volumes and the network."""
        hook_error = None
        build = self.job_containers.ids.get("build") if self.job_containers else None
        try:
            self._call_hook("before_cleanup", self.context, self.services.services, build)
        except _HookError as error:
            hook_error = error.__cause__

        started = time.monotonic()
        ids = [container["id"] for container in self.context.containers]
        cleanup.remove_containers(self.client, ids, remove_volumes=not self.context.settings.volume_keep)
        self.volumes.remove_temporary()
        self.network.remove()
        self.timings["cleanup"] = round(time.monotonic() - started, 3)
        return hook_error

    def _write_status(self, failure: _JobFailed | None) -> None:
        if failure is None:
            self.trace.line("Job succeeded", ANSI_BOLD_GREEN)
        elif failure.reason == "runner_system_failure" and failure.exit_code is None:
            self.trace.line(f"ERROR: Job failed (system failure): {failure}", ANSI_BOLD_RED)
        else:
            self.trace.line(f"ERROR: Job failed: {failure}", ANSI_BOLD_RED)

    def _result(self, failure: _JobFailed | None, fault: str = "") -> JobResult:
        context = self.context
        temporary = set(self.volumes.temporary)
        return JobResult(
            status=SUCCESS if failure is None else FAILED,
            exit_code=None if failure is None else failure.exit_code,
            failure_reason="" if failure is None else failure.reason,
            fault=fault,
            trace=self.trace.getvalue(), job_id=context.job_id, project_dir=context.project_dir,
            container_prefix=context.prefix, network_mode=context.network_mode,
            containers=list(context.containers),
            volumes=[{**volume, "removed": volume["name"] in temporary} for volume in self.volumes.created],
            networks=[{"id": self.network.network_id, "name": self.network.created, "removed": True}]
            if self.network.created else [],
            services=[info.to_dict() for info in self.services.services],
            timings=dict(self.timings),
        )


class _HookError(Exception):
    """An observer hook raised; the original exception is the ``__cause__``."""

    def __init__(self, hook: str) -> None:
        super().__init__(f"the observer's {hook} hook raised an exception")
