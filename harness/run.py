"""Run a scenario's pipeline in one mode and collect job results and placement.

First every input file is read and every image is checked, so nothing is created when one is
invalid. Then the project is committed and the registry started (in DinD also the pull mirror),
and both are wired into the runner config the way a runner admin would do it. The compiled
pipeline is served by the run's GitLab coordinator, and the runner container takes the jobs from
it stage by stage over the job API, with a host snapshot after each job. The results are read
back through python-gitlab. At the end everything the run created is torn down again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests

from harness import labels
from harness import placement as placement_module
from harness import runner_image
from harness.coordinator import Coordinator, ProjectInfo
from harness.coordinator_jobs import JobState, PipelineQueue
from harness.gitlab_results import FINISHED_PIPELINE, JobRecord, PipelineReader
from harness.engine_lines import EngineLine, substitute_image, substitute_payload_images
from harness.errors import InputError, RegistryError
from harness.host import HostEngine
from harness.mirror_images import named_references, run_texts
from harness.pipeline import CompiledJob, Pipeline, compile_pipeline, load_pipeline
from harness.project import Project
from harness.registry import DEFAULT_MIRROR_IMAGES, Registry, shared_mirror
from harness.registry_trust import HostTrust, Wiring
from harness.runner import (RUNNER_IMAGE, InProcessRunner, RunnerContainer, RunnerStopped, image_exists,
                            render_toml)
from harness.executor.settings import DEFAULT_HELPER_IMAGE
from harness.runner_config import RunnerConfig, load_runner_config
from harness.scenario import Scenario
from harness.variables import Variable, mask

log = logging.getLogger(__name__)

# Job ids are pipeline_id * JOBS_PER_PIPELINE + n, which stays below 2**31 with these bounds.
JOBS_PER_PIPELINE = 1000
MAX_PIPELINE_ID = 2_000_000

# One request in the registry's access log: ... "GET /v2/<name>/manifests/<tag> HTTP/1.1" 200 ...
_ACCESS_LINE = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP/[\d.]+" (\d{3})')
# Seconds between two reads of the pipeline's status while it runs.
WAIT_INTERVAL = 0.5
# A pipeline with pending jobs and none running fails the run when no runner called the job API
# for this many seconds.
JOB_REQUEST_TIMEOUT = 180


@dataclass
class JobResult:
    """One job's outcome, with its trace (masked) and the raw executor result."""

    name: str
    stage: str
    status: str
    exit_code: int | None = None
    trace: str = ""
    duration: float = 0.0
    details: dict = field(default_factory=dict)
    # Wall-clock start (epoch seconds): the executor's stage timings are durations only.
    started_at: float = 0.0
    docker_host: str = ""
    reason: str = ""


@dataclass
class RunResult:
    """The outcome of one pipeline run in one mode."""

    scenario: str
    mode: str
    jobs: list[JobResult]
    placement: placement_module.Placement
    registry_tags: dict[str, list[str]] = field(default_factory=dict)
    registry_log: str = ""
    secrets: list[str] = field(default_factory=list, repr=False)
    # The runner's ``[runners.docker] volumes``, which tell whether jobs see the host socket.
    runner_volumes: list[str] = field(default_factory=list)
    # Which engine played the host: "local engine" or "sandbox <container name>".
    host: str = "local engine"
    # Requests the run's coordinator served, by endpoint (``POST /jobs/request``: 12, ...).
    job_api_requests: dict[str, int] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        """Whether every job that ran succeeded (or was allowed to fail)."""
        return all(job.status in ("success", "skipped") for job in self.jobs)

    @property
    def registry_requests(self) -> list[str]:
        """Return the registry's access log as ``METHOD PATH STATUS`` lines, oldest first."""
        return [f"{m.group(1)} {m.group(2)} {m.group(3)}" for m in _ACCESS_LINE.finditer(self.registry_log)]

    def leaked_secrets(self) -> list[str]:
        """Return where a masked value still appears in clear text (traces, registry log); [] when none."""
        texts = {f"trace of {job.name}": job.trace for job in self.jobs}
        texts["registry log"] = self.registry_log
        return [where for where, text in texts.items() for secret in self.secrets if secret and secret in text]

    def job(self, name: str) -> JobResult:
        """Return the result of the job called ``name``."""
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(f"no job {name!r}; jobs: {', '.join(j.name for j in self.jobs)}")

    def summary(self) -> str:
        """Render the job results as aligned lines."""
        width = max((len(job.name) for job in self.jobs), default=4)
        lines = [f"jobs ({self.mode}):"]
        for job in self.jobs:
            code = "" if job.exit_code is None else f" (exit {job.exit_code})"
            reason = f" ({job.reason})" if job.reason else ""
            lines.append(f"  {job.stage:<8} {job.name.ljust(width)}  {job.status}{code}{reason}  {job.duration:.1f} s")
        return "\n".join(lines)


@dataclass
class RunOptions:
    """How to run: in-process executor for debugging, extra variables, branch override."""

    in_process: bool = False
    pull_policy: str | None = None
    # The engine jobs run against; None runs them on the engine of the client given to run_scenario.
    host: HostEngine | None = None
    variables: list[Variable] = field(default_factory=list)
    branch: str | None = None
    # Only these jobs run when not empty; the others are reported as skipped.
    jobs: tuple[str, ...] = ()
    # The GitLab Runner version the executor behaves like (harness.executor.compat); None: current.
    runner_version: str | None = None
    # Jobs' docker images are replaced by this engine line's (harness.engine_lines); None: as written.
    engine_line: EngineLine | None = None
    # A gitlab/gitlab-runner image started with ``run-single`` instead of the harness's runner;
    # it must exist on the engine, because nothing can be pulled.
    runner_image: str | None = None


def run_scenario(client: docker.DockerClient, scenario: Scenario, mode: str,
                 options: RunOptions | None = None,
                 inputs: tuple[Pipeline, RunnerConfig] | None = None) -> RunResult:
    """Run ``scenario``'s pipeline in ``mode`` (a name under ``[modes]``) on the engine behind ``client``.

    ``inputs`` is what :func:`check_inputs` returned for this scenario, mode and options. When
    it is None, the inputs are checked here.

    Raises:
        InputError: an input file is invalid or names an image that does not exist locally;
            nothing has been created on the engine then.
    """
    options = options or RunOptions()
    pipeline, config = inputs or check_inputs(client, scenario, mode, options)

    with contextlib.ExitStack() as stack:
        session = _Session(client, scenario, mode, options, stack)
        return session.run(pipeline, config)


def check_inputs(client: docker.DockerClient, scenario: Scenario, mode: str,
                 options: RunOptions) -> tuple[Pipeline, RunnerConfig]:
    """Read the pipeline and runner config of ``mode`` and check that every image they name is local.

    Only lists images on the engine, so a caller can check several modes before running any.

    Raises:
        InputError: the mode, a file, the branch or an image is invalid. The message names the
            file and the key (``default.image``, ``build.services[0]``, ``runners[0].docker.image``).
    """
    files = scenario.mode_files(mode)
    pipeline = load_pipeline(files.pipeline)
    config = load_runner_config(files.runner_config)
    scenario.check_branch(options.branch)
    _check_job_names(pipeline, files.pipeline, options.jobs)
    if options.runner_image:
        runner_image.require_image(client, options.runner_image)

    named = _named_images(files, pipeline, config)
    if options.engine_line is not None:
        named = [(path, key, substitute_image(image, options.engine_line)) for path, key, image in named]

    checked: set[str] = set()
    for path, key, image in named:
        # The runner expands variables in image names per job, so such a name is checked then.
        if image in checked or "$" in image:
            continue
        checked.add(image)
        if not image:
            raise InputError(path, key, "missing, and a job names no image of its own",
                             'set image = "busybox" or give every job an image')
        try:
            exists = image_exists(client, image)
        except docker.errors.APIError as error:
            if error.status_code != 400:
                raise
            raise InputError(path, key, f'invalid image reference "{image}"',
                             "write NAME[:TAG] in lower case, such as docker:24.0") from None
        if not exists:
            raise InputError(path, key, f'image "{image}" does not exist on the engine and cannot be pulled here',
                             "run `harness images build` or name a stand-in (`harness images list`)")
    return pipeline, config


def _named_images(files, pipeline: Pipeline, config: RunnerConfig) -> list[tuple[Path, str, str]]:
    """Return (file, key, image) for every image the pipeline and runner config name."""
    runner_key = f"runners[{config.selected}].docker"
    named = [(files.runner_config, f"{runner_key}.services[{index}].name", service.name)
             for index, service in enumerate(config.docker.services)]
    if config.docker.helper_image:
        named.append((files.runner_config, f"{runner_key}.helper_image", config.docker.helper_image))
    for job in pipeline.jobs:
        if job.image_name:
            named.append((files.pipeline, job.image_key, job.image_name))
        else:
            # GitLab Runner falls back to its default image only for jobs that name none.
            named.append((files.runner_config, f"{runner_key}.image", config.docker.image))
        named += [(files.pipeline, f"{job.services_key}[{index}]", name)
                  for index, name in enumerate(job.service_images)]
    return named


def _check_job_names(pipeline: Pipeline, path, names: tuple[str, ...]) -> None:
    known = [job.name for job in pipeline.jobs]
    for name in names:
        if name not in known:
            raise InputError(path, f"--job {name}", "no such job in the pipeline",
                             f"name one of: {', '.join(known)}")


class _Session:
    """Everything one run creates, registered on an ExitStack so that it is undone in reverse."""

    def __init__(self, client, scenario: Scenario, mode: str, options: RunOptions,
                 stack: contextlib.ExitStack) -> None:
        self.host = options.host or HostEngine.local(client)
        # Jobs, runner and placement use the host's engine; registries run on the real engine
        # under it, where this process and every nested daemon can reach them.
        self.client = self.host.client
        self.scenario = scenario
        self.mode = mode
        self.options = options
        self.stack = stack
        # The mode's kind, not its free-form name, decides how the registry and mirror are wired.
        self.kind = scenario.mode_files(mode).kind
        self.registry: Registry | None = None
        self.host_trust: HostTrust | None = None
        # Set once the host engine stops answering; snapshots and teardown then skip it.
        self.host_lost = False
        self.secrets: list[str] = []
        # Why a job failed, by job name, as the host saw it (a stopped registry or host engine).
        self.reasons: dict[str, str] = {}
        # Errors raised while the coordinator reported a finished job, raised again in this thread.
        self.report_errors: list[BaseException] = []

    def run(self, pipeline, config: RunnerConfig) -> RunResult:
        project = self._project()
        variables, wiring = self._registry_and_mirror()
        variables += [Variable(key, value, masked=False, public=False)
                      for key, value in self.scenario.mode_files(self.mode).variables]
        coordinator = self._coordinator(project)
        pipeline_id = _new_pipeline_id()
        compiled = compile_pipeline(pipeline, project, branch=self.options.branch or self.scenario.branch,
                                    variables=[*variables, *self.options.variables], server_url=coordinator.url,
                                    pipeline_id=pipeline_id, first_job_id=pipeline_id * JOBS_PER_PIPELINE + 1)
        # Each job's payload adds masked values of its own: CI_JOB_TOKEN and CI_REGISTRY_PASSWORD.
        payload_secrets = [value for job in compiled.jobs for value in job.masked_values()]
        self.secrets = list(dict.fromkeys(
            [v.value for v in [*variables, *self.options.variables] if v.masked] + payload_secrets))

        self._seed_host(pipeline, config)
        baseline = self._snapshot_host("before the pipeline")
        self.stack.callback(self._remove_what_jobs_left, baseline, _mounts_host_socket(config))
        snapshots: list[placement_module.Snapshot] = []
        queue = self._serve(coordinator, pipeline_id, compiled, snapshots)
        jobs: list[JobResult] = []
        if compiled.jobs:
            self._wait_for_host_trust()
            runner = self._runner(config, wiring, project, coordinator, queue)
            # Registered after the runner, so teardown cancels the jobs before it removes the runner.
            self.stack.callback(_abort, queue)
            records = self._run_pipeline(coordinator, project, runner, queue)
            jobs = [self._job_result(record, queue.states[record.id]) for record in records]

        result = RunResult(self.scenario.name, self.mode, jobs,
                           self._masked_placement(baseline, snapshots), secrets=self.secrets,
                           runner_volumes=list(config.docker.volumes), host=self.host.description,
                           job_api_requests=dict(coordinator.requests))
        if self.registry is not None:
            result.registry_tags = self._registry_tags()
            result.registry_log = mask(self.registry.logs(tail="all"), self.secrets)
        return result

    def _coordinator(self, project: Project) -> Coordinator:
        """Start the run's coordinator on the host's address that the runner container reaches."""
        info = ProjectInfo(project.id, project.path, project.default_branch, project.repo_dir)
        coordinator = Coordinator(info, host=self.host.coordinator_address()).start()
        self.stack.callback(coordinator.close)
        return coordinator

    def _serve(self, coordinator: Coordinator, pipeline_id: int, compiled, snapshots) -> PipelineQueue:
        """Queue the compiled jobs on the coordinator; each finished job adds its snapshots."""
        jobs = compiled.jobs
        if self.options.engine_line is not None:
            jobs = [dataclasses.replace(job, payload=substitute_payload_images(job.payload, self.options.engine_line))
                    for job in jobs]
        queue = PipelineQueue(pipeline_id, compiled.stages, jobs, selected=self.options.jobs,
                              on_finished=lambda state: self._job_finished(state, snapshots))
        coordinator.serve(queue)
        return queue

    def _run_pipeline(self, coordinator: Coordinator, project: Project, runner, queue: PipelineQueue) -> list[JobRecord]:
        """Create the pipeline through python-gitlab, wait until it has finished, and read its jobs.

        Raises:
            RunnerStopped: the runner ended, or requested no job for ``JOB_REQUEST_TIMEOUT``
                seconds, while jobs were pending.
        """
        reader = PipelineReader(coordinator.url, coordinator.api_token, project.id)
        reader.create(next(iter(queue.states.values())).job.payload["git_info"]["ref"])
        started = time.monotonic()
        announced: set[int] = set()
        while reader.status() not in FINISHED_PIPELINE:
            self._log_started_jobs(queue, announced)
            if self.report_errors:
                raise self.report_errors[0]
            if not self.host.responds():
                self._fail_for_lost_host(queue)
                continue
            runner.check()
            _check_runner_polls(coordinator, queue, started)
            time.sleep(WAIT_INTERVAL)
        if self.report_errors:
            raise self.report_errors[0]
        return reader.jobs()

    def _log_started_jobs(self, queue: PipelineQueue, announced: set[int]) -> None:
        """Log each job that a runner took since the last call, once."""
        with queue.lock:
            running = [state.job for state in queue.states.values()
                       if state.status != "created" and state.started_at is not None and state.job.id not in announced]
        for job in running:
            announced.add(job.id)
            log.info("job %s (stage %s) starting in %s mode", job.name, job.stage, self.mode)

    def _job_finished(self, state: JobState, snapshots) -> None:
        """Add the job's snapshots, and the host's right after it, before its runner gets the next job.

        Called in the coordinator's request thread. Errors are kept for the run's thread, because
        the runner must get its reply in any case.
        """
        name = state.job.name
        details = state.report.get("harness_result") or {}
        try:
            for observed in details.get("snapshots", []):
                snapshots.append(placement_module.Snapshot.from_dict(observed))
            snapshots.append(self._snapshot_host(f"after {name}"))
            if state.status == "failed" and name not in self.reasons:
                self.reasons[name] = details.get("fault") or self._registry_fault()
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as error:
            if self.host.responds():
                self.report_errors.append(error)
            else:
                log.warning("no snapshot after job %s: the host engine (%s) stopped responding",
                            name, self.host.description)
        except Exception as error:  # noqa: BLE001 - raised again in the run's thread
            self.report_errors.append(error)
        log.info("job %s finished: %s in %.1f s", name, state.status, state.duration or 0.0)

    def _fail_for_lost_host(self, queue: PipelineQueue) -> None:
        """Fail the running jobs, whose host engine stopped responding, and cancel the rest."""
        self.host_lost = True
        reason = f"the host engine ({self.host.description}) stopped responding during the job"
        running = [state for state in list(queue.states.values()) if state.status == "running"]
        for state in running:
            log.error("job %s failed, because %s", state.job.name, reason)
            self.reasons[state.job.name] = reason
            queue.finish(state, "failed", None, "runner_system_failure", {})
        queue.abort()

    def _job_result(self, record: JobRecord, state: JobState) -> JobResult:
        """Return the run's result for one job: status and trace as python-gitlab read them.

        The executor's result (containers, volumes, snapshots) comes from the runner's final
        update; a real gitlab-runner sends none, so ``details`` is empty then.
        """
        # The executor's result lists resource names, which may contain a masked value.
        details = json.loads(mask(json.dumps(state.report.get("harness_result") or {}), self.secrets))
        exit_code = details.get("exit_code") if "exit_code" in details else state.report.get("exit_code")
        status, reason = record.status, ""
        if status in ("skipped", "manual"):
            status, reason = "skipped", self._skip_reason(state.job)
        elif status == "canceled":
            reason = "canceled when the run ended"
        elif status == "failed":
            reason = mask(self.reasons.get(record.name, ""), self.secrets)
        return JobResult(record.name, record.stage, status, exit_code, record.trace, record.duration, details,
                         record.started_at, _docker_host(state.job.payload), reason)

    def _masked_placement(self, baseline, snapshots) -> placement_module.Placement:
        """Return the placement with masked values hidden in every resource name it lists."""
        def hide(text: str) -> str:
            return mask(text, self.secrets)

        return placement_module.Placement(self.mode, baseline.masked(hide), [s.masked(hide) for s in snapshots])

    def _registry_tags(self) -> dict[str, list[str]]:
        """Return what the registry stores, or {} when it stopped during the run (logged)."""
        try:
            return self.registry.tags()
        except RegistryError as error:
            log.warning("listing the registry's tags after the run failed: %s", error)
            return {}

    def _registry_fault(self) -> str:
        """Return one line saying that the registry stopped, or "" while it runs (or none exists)."""
        if self.registry is None or self.registry.container is None:
            return ""
        try:
            self.registry.container.reload()
        except docker.errors.NotFound:
            return f"the registry {self.registry.address} ({self.registry.name}) was removed during the job"
        state = self.registry.container.attrs["State"]
        if state.get("Running"):
            return ""
        last_line = (self.registry.logs(tail=1).strip().splitlines() or [""])[-1]
        return (f"the registry {self.registry.address} ({self.registry.name}) stopped during the job "
                f"with exit code {state.get('ExitCode')}; its last log line: {mask(last_line, self.secrets)}")

    def _project(self) -> Project:
        work_dir = Path(self.stack.enter_context(
            tempfile.TemporaryDirectory(prefix=labels.temp_prefix("project"), ignore_cleanup_errors=True)))
        return Project.from_directory(self.scenario.project_dir, self.scenario.namespace,
                                      self.scenario.project_name, branch=self.scenario.branch,
                                      work_dir=work_dir)

    def _registry_and_mirror(self) -> tuple[list[Variable], Wiring]:
        wiring = Wiring((), ())
        variables: list[Variable] = []
        spec = self.scenario.registry
        if spec is not None:
            self.registry = self.stack.enter_context(
                Registry(self.host.real_client).with_network(self.host.network).with_hostnames([spec.hostname])
                .with_auth(username=f"ci-{secrets.token_hex(4)}"))
            wiring = wiring + self.registry.wiring()
            if self.kind == "dood":
                certs_dir, hosts_file = self.host.trust_paths()
                self.host_trust = self.registry.install_host_trust(certs_dir, hosts_file,
                                                                   resolve=self.host.resolver())
            variables = [Variable(spec.user_variable, self.registry.username, masked=True, public=False),
                         Variable(spec.password_variable, self.registry.password, masked=True, public=False),
                         Variable(spec.address_variable, spec.hostname, masked=False, public=False)]
        if self.kind == "dind":
            wiring = wiring + self._mirror().wiring()
        elif self.host.sandbox is not None:
            # A sandbox daemon pulls what DooD jobs name (FROM lines, docker run) through the mirror.
            self._mirror()
        return variables, wiring

    def _wait_for_host_trust(self) -> None:
        """Keep DooD jobs from reaching the registry before the host's daemon reads the new hosts entry."""
        if self.host_trust is None:
            return
        waited = self.host_trust.wait_for_daemon_cache()
        log.debug("waited %.1f s for the host daemon's copy of %s to expire", waited, self.host_trust.hosts_file)

    def _mirror(self):
        """Return the shared pull mirror of the host's network, with the stand-ins this run names pushed."""
        return shared_mirror(self.host.real_client, self.host.network, self._mirror_references())

    def _mirror_references(self) -> list[str]:
        """Return the stand-ins the mirror must contain: those the run's files and variables name."""
        files = self.scenario.mode_files(self.mode)
        values = [value for _, value in files.variables] + [variable.value for variable in self.options.variables]
        texts = run_texts(files.pipeline, self.scenario.project_dir, values)
        local = [reference for reference in DEFAULT_MIRROR_IMAGES
                 if image_exists(self.host.real_client, reference)]
        references = named_references(texts, local)
        log.info("pull mirror: stand-ins named by this run: %s", ", ".join(references) or "none")
        return references

    def _runner(self, config: RunnerConfig, wiring: Wiring, project: Project, coordinator: Coordinator,
                queue: PipelineQueue):
        """Start the runner that takes the jobs from ``coordinator``: a container, or a thread here."""
        wired = config.with_wiring(extra_hosts=list(wiring.extra_hosts), volumes=list(wiring.volumes))
        if self.options.pull_policy:
            wired = _with_pull_policy(wired, self.options.pull_policy)
        if self.options.runner_image:
            runner = runner_image.ImageRunner(self.client, wired, self.options.runner_image, coordinator.url,
                                              coordinator.runner_token, max_builds=_runnable_jobs(queue))
        else:
            runner_class = InProcessRunner if self.options.in_process else RunnerContainer
            runner = runner_class(self.client, render_toml(wired.to_dict()), project.repo_dir, coordinator.url,
                                  coordinator.runner_token, self.scenario.watch_paths,
                                  runner_version=self.options.runner_version)
        self.stack.callback(self._close_runner, runner)
        return runner.start()

    def _close_runner(self, runner) -> None:
        """Copy the runner's warnings and errors into this log (masked), then remove the runner."""
        try:
            for line in mask(runner.logs(), self.secrets).splitlines():
                level = logging.WARNING if line.startswith(("WARNING", "ERROR", "CRITICAL")) else logging.DEBUG
                log.log(level, "runner: %s", line)
            runner.close()
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            if not self.host_lost:
                raise
            log.warning("runner container not removed: the host engine (%s) is gone", self.host.description)

    def _skip_reason(self, job: CompiledJob) -> str:
        """Return why the coordinator skipped ``job``: --job selection, ``when``, or a failure."""
        if self.options.jobs and job.name not in self.options.jobs:
            return "not selected by --job"
        if job.when in ("never", "manual", "on_failure"):
            return f"when: {job.when}"
        return "an earlier job failed"

    def _seed_host(self, pipeline, config: RunnerConfig) -> None:
        """Pull into a sandbox host the images this run names, through the shared mirror."""
        if self.host.sandbox is None:
            return
        named = [image for _, _, image in _named_images(self.scenario.mode_files(self.mode), pipeline, config)]
        if self.options.engine_line is not None:
            named = [substitute_image(image, self.options.engine_line) for image in named]
        wanted = [self.options.runner_image or RUNNER_IMAGE, config.docker.helper_image or DEFAULT_HELPER_IMAGE, *named]
        self.host.sandbox.seed(dict.fromkeys(image for image in wanted if "$" not in image))

    def _snapshot_host(self, when: str) -> placement_module.Snapshot:
        if self.host_lost:
            return placement_module.Snapshot(placement_module.HOST, f"{when} (host engine gone)")
        return placement_module.snapshot_engine(self.client, placement_module.HOST, when, self.scenario.watch_paths,
                                                list_path=self.host.list_path)

    def _remove_what_jobs_left(self, baseline: placement_module.Snapshot, jobs_reach_host: bool) -> None:
        """Remove containers, images and watched paths that jobs created on the host engine.

        In DooD a job's own ``docker run`` leaves containers on the host that carry no harness
        label. They are found by comparing with the snapshot taken before the first job. Without
        the host socket in the runner's volumes, jobs cannot reach the host engine, so only
        watched paths are removed then. Labelled containers are left to their owners, so runs in
        parallel threads keep their runners, registries and services.
        NOTE: with ``--host-engine=local``, anything unlabelled that another process creates on
        the same engine during the run is removed too. The default sandbox host has no such risk.
        """
        if self.host_lost:
            log.warning("host engine (%s) is gone; what jobs left on it is not removed", self.host.description)
            return
        final = self._snapshot_host("teardown")
        # Containers go first, so none of them still writes into a watched path being removed.
        if jobs_reach_host:
            self._remove_host_leftovers(baseline, final)
        for path in set(final.paths) - set(baseline.paths):
            self.host.remove_path(path)
            log.info("removed host path %s that a job created", path)

    def _remove_host_leftovers(self, baseline: placement_module.Snapshot, final: placement_module.Snapshot) -> None:
        remove_host_leftovers(self.client, baseline, final)


def remove_host_leftovers(client, baseline: placement_module.Snapshot, final: placement_module.Snapshot) -> None:
    """Remove the unlabelled containers and the images that appeared on the host engine between two snapshots.

    Stand-ins and the push tags of harness registries stay: a push tag can belong to another
    session's push that is still running on the same engine.
    """
    known = {c.name for c in baseline.containers}
    for record in final.containers:
        if record.name not in known and not _is_managed(client, record.id):
            _ignore_missing(lambda: client.containers.get(record.id).remove(force=True, v=True))
            log.info("removed container %s that a job left on the host engine", record.name)

    registries = _registry_addresses(client)
    for image in set(final.images) - set(baseline.images):
        if _is_stand_in(client, image) or image.split("/", 1)[0] in registries:
            continue
        _ignore_missing(lambda: client.images.remove(image, force=True))
        log.info("removed image %s that a job built on the host engine", image)


def _abort(queue: PipelineQueue) -> None:
    """Cancel the jobs that have not finished, so an interrupted run hands out no more jobs."""
    canceled = queue.abort()
    if canceled:
        log.warning("canceled jobs that had not finished: %s", ", ".join(state.job.name for state in canceled))


def _check_runner_polls(coordinator: Coordinator, queue: PipelineQueue, started: float) -> None:
    """Raise when jobs wait, none runs, and no runner called the job API for ``JOB_REQUEST_TIMEOUT`` seconds.

    A running job keeps a runner with one slot from polling, so only an idle pipeline counts.
    """
    with queue.lock:
        statuses = [state.status for state in queue.states.values()]
    waiting = "pending" in statuses and "running" not in statuses
    last = coordinator.last_runner_request or started
    if waiting and time.monotonic() - last > JOB_REQUEST_TIMEOUT:
        raise RunnerStopped(f"no runner requested a job from {coordinator.url} for {JOB_REQUEST_TIMEOUT} s "
                            "while jobs were pending; the runner's log above says why")


def _runnable_jobs(queue: PipelineQueue) -> int:
    """Return how many jobs may run at most: those not skipped by --job or ``when: never/manual``."""
    return sum(1 for state in queue.states.values()
               if state.job.when not in ("never", "manual")
               and (not queue.selected or state.job.name in queue.selected))


def _mounts_host_socket(config: RunnerConfig) -> bool:
    """Return whether the runner gives jobs the host engine's socket through ``[runners.docker] volumes``."""
    return any(volume.split(":", 1)[0].endswith("docker.sock") for volume in config.docker.volumes)


def _is_managed(client, container_id: str) -> bool:
    try:
        container_labels = client.api.inspect_container(container_id)["Config"].get("Labels") or {}
    except docker.errors.NotFound:
        return True
    return container_labels.get(labels.MANAGED) == "true"


def _with_pull_policy(config: RunnerConfig, policy: str) -> RunnerConfig:
    """Return a copy of ``config`` whose every runner uses ``policy`` (the plugin's override)."""
    runners = tuple(dataclasses.replace(runner, docker=dataclasses.replace(runner.docker, pull_policy=(policy,)))
                    for runner in config.runners)
    return dataclasses.replace(config, runners=runners)


def _docker_host(payload: dict) -> str:
    """Return the job's ``DOCKER_HOST`` variable, or "" when the job sets none."""
    for variable in payload.get("variables", []):
        if variable.get("key") == "DOCKER_HOST":
            return str(variable.get("value", ""))
    return ""


def _new_pipeline_id() -> int:
    """Return a random pipeline id, so that two sessions on one engine never reuse job ids.

    GitLab's job ids are unique across its instance, and the runner puts them into per-build
    network names, so sessions that both counted from 1 would collide there.
    """
    return 1000 + secrets.randbelow(MAX_PIPELINE_ID - 1000)


def _registry_addresses(client) -> set[str]:
    """Return the addresses of every harness registry and mirror on the engine, of any session.

    A registry push first tags the image with the registry's address on the engine. On a shared
    local host, another session's push tag can appear during a DooD run, and removing it would
    fail that push.
    """
    from harness import labels

    summaries = client.api.containers(filters={"label": [f"{labels.MANAGED}=true", f"{labels.TYPE}=registry"]})
    return {network.get("IPAddress") for summary in summaries
            for network in ((summary.get("NetworkSettings") or {}).get("Networks") or {}).values()
            if network.get("IPAddress")}


def _is_stand_in(client, reference: str) -> bool:
    """Return whether ``reference`` is a forge-built stand-in, which teardown must keep.

    Images built ``FROM`` a stand-in inherit its labels, so the reference must also be one of
    the tags the label names.
    """
    from harness import labels

    try:
        image_labels = client.images.get(reference).labels or {}
    except docker.errors.ImageNotFound:
        return False
    tags = [placement_module.normalize_reference(tag) for tag in image_labels.get(labels.UPSTREAM, "").split(",") if tag]
    return image_labels.get(labels.STAND_IN) == "true" and placement_module.normalize_reference(reference) in tags


def _ignore_missing(remove) -> None:
    """Call ``remove``, treating a resource that is gone or already being removed as removed."""
    try:
        remove()
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as error:
        # Another process on the same engine removes it at this moment: dockerd answers 409.
        if error.status_code != 409 or "already in progress" not in str(error.explanation or error):
            raise
        log.debug("removal already in progress elsewhere: %s", error.explanation)
