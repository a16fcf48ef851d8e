"""Run a scenario's pipeline in one mode and collect job results and placement.

First every input file is read and every image is checked, so nothing is created when one is
invalid. Then the project is committed and the registry started (in DinD also the pull mirror),
and both are wired into the runner config the way a runner admin would do it. The runner
container then runs the jobs stage by stage, with a host snapshot after each job. At the end
everything the run created is torn down again.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

from harness import labels
from harness import placement as placement_module
from harness import stage_jobs
from harness.engine_lines import EngineLine, substitute_image, substitute_payload_images
from harness.errors import InputError
from harness.pipeline import CompiledJob, Pipeline, compile_pipeline, load_pipeline
from harness.project import Project
from harness.registry import Mirror, Registry
from harness.registry_trust import Wiring
from harness.runner import InProcessRunner, RunnerContainer, render_toml
from harness.runner_config import RunnerConfig, load_runner_config
from harness.scenario import Scenario
from harness.variables import Variable, mask

log = logging.getLogger(__name__)

# Job ids are pipeline_id * JOBS_PER_PIPELINE + n, which stays below 2**31 with these bounds.
JOBS_PER_PIPELINE = 1000
MAX_PIPELINE_ID = 2_000_000

# One request in the registry's access log: ... "GET /v2/<name>/manifests/<tag> HTTP/1.1" 200 ...
_ACCESS_LINE = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP/[\d.]+" (\d{3})')


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
    variables: list[Variable] = field(default_factory=list)
    branch: str | None = None
    # Only these jobs run when not empty; the others are reported as skipped.
    jobs: tuple[str, ...] = ()
    # The GitLab Runner version the executor behaves like (harness.executor.compat); None: current.
    runner_version: str | None = None
    # Jobs' docker images are replaced by this engine line's (harness.engine_lines); None: as written.
    engine_line: EngineLine | None = None


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

    runner_key = f"runners[{config.selected}].docker"
    wanted = [(files.runner_config, f"{runner_key}.services[{index}].name", service.name)
              for index, service in enumerate(config.docker.services)]
    if config.docker.helper_image:
        wanted.append((files.runner_config, f"{runner_key}.helper_image", config.docker.helper_image))
    for job in pipeline.jobs:
        if job.image_name:
            wanted.append((files.pipeline, job.image_key, job.image_name))
        else:
            # GitLab Runner falls back to its default image only for jobs that name none.
            wanted.append((files.runner_config, f"{runner_key}.image", config.docker.image))
        wanted += [(files.pipeline, f"{job.services_key}[{index}]", name)
                   for index, name in enumerate(job.service_images)]

    if options.engine_line is not None:
        wanted = [(path, key, substitute_image(image, options.engine_line)) for path, key, image in wanted]
    checked: set[str] = set()
    for path, key, image in wanted:
        # The runner expands variables in image names per job, so such a name is checked then.
        if image in checked or "$" in image:
            continue
        checked.add(image)
        if not image:
            raise InputError(path, key, "missing, and a job names no image of its own",
                             'set image = "busybox" or give every job an image')
        try:
            exists = _image_exists(client, image)
        except docker.errors.APIError as error:
            if error.status_code != 400:
                raise
            raise InputError(path, key, f'invalid image reference "{image}"',
                             "write NAME[:TAG] in lower case, such as docker:24.0") from None
        if not exists:
            raise InputError(path, key, f'image "{image}" does not exist on the engine and cannot be pulled here',
                             "run `harness images build` or name a stand-in (`harness images list`)")
    return pipeline, config


def _check_job_names(pipeline: Pipeline, path, names: tuple[str, ...]) -> None:
    known = [job.name for job in pipeline.jobs]
    for name in names:
        if name not in known:
            raise InputError(path, f"--job {name}", "no such job in the pipeline",
                             f"name one of: {', '.join(known)}")


_mirror: Mirror | None = None
_mirror_lock = threading.Lock()


def shared_mirror(client: docker.DockerClient) -> Mirror:
    """Return this process's pull mirror, starting it on first use; it is stopped at exit.

    Preloading the mirror pushes every preloaded stand-in (node:18 alone is 300 MB), which costs
    about 15 s, so one mirror serves every DinD run of a session instead of one per run. It
    carries the session's labels, so `harness clean` also finds it after a crash.
    """
    global _mirror
    # Scenarios run from parallel threads must not start a mirror each.
    with _mirror_lock:
        if _mirror is not None and _mirror_running(_mirror):
            return _mirror

        _mirror = Mirror(client).start()
        atexit.register(_mirror.stop)
        return _mirror


def _mirror_running(mirror: Mirror) -> bool:
    try:
        mirror.container.reload()
    except docker.errors.NotFound:
        return False
    return mirror.container.status == "running"


def _image_exists(client, reference: str) -> bool:
    try:
        client.images.get(placement_module.normalize_reference(reference))
    except docker.errors.ImageNotFound:
        return False
    return True


class _Session:
    """Everything one run creates, registered on an ExitStack so that it is undone in reverse."""

    def __init__(self, client, scenario: Scenario, mode: str, options: RunOptions,
                 stack: contextlib.ExitStack) -> None:
        self.client = client
        self.scenario = scenario
        self.mode = mode
        self.options = options
        self.stack = stack
        # The mode's kind, not its free-form name, decides how the registry and mirror are wired.
        self.kind = scenario.mode_files(mode).kind
        self.registry: Registry | None = None
        self.secrets: list[str] = []

    def run(self, pipeline, config: RunnerConfig) -> RunResult:
        project = self._project()
        variables, wiring = self._registry_and_mirror()
        variables += [Variable(key, value, masked=False, public=False)
                      for key, value in self.scenario.mode_files(self.mode).variables]
        pipeline_id = _new_pipeline_id()
        compiled = compile_pipeline(pipeline, project, branch=self.options.branch or self.scenario.branch,
                                    variables=[*variables, *self.options.variables],
                                    pipeline_id=pipeline_id, first_job_id=pipeline_id * JOBS_PER_PIPELINE + 1)
        self.secrets = [v.value for v in [*variables, *self.options.variables] if v.masked]

        baseline = placement_module.snapshot_engine(self.client, placement_module.HOST, "before the pipeline",
                                                    self.scenario.watch_paths)
        self.stack.callback(self._remove_what_jobs_left, baseline)
        runner = self._runner(config, wiring, project)
        snapshots: list[placement_module.Snapshot] = []
        jobs = self._run_stages(runner, compiled, snapshots, config.concurrent)

        result = RunResult(self.scenario.name, self.mode, jobs,
                           placement_module.Placement(self.mode, baseline, snapshots), secrets=self.secrets,
                           runner_volumes=list(config.docker.volumes))
        if self.registry is not None:
            result.registry_tags = self.registry.tags()
            result.registry_log = mask(self.registry.logs(tail="all"), self.secrets)
        return result

    def _project(self) -> Project:
        work_dir = Path(self.stack.enter_context(
            tempfile.TemporaryDirectory(prefix="harness-project-", ignore_cleanup_errors=True)))
        return Project.from_directory(self.scenario.project_dir, self.scenario.namespace,
                                      self.scenario.project_name, branch=self.scenario.branch,
                                      work_dir=work_dir)

    def _registry_and_mirror(self) -> tuple[list[Variable], Wiring]:
        wiring = Wiring((), ())
        variables: list[Variable] = []
        spec = self.scenario.registry
        if spec is not None:
            self.registry = self.stack.enter_context(
                Registry(self.client).with_hostnames([spec.hostname])
                .with_auth(username=f"ci-{secrets.token_hex(4)}"))
            wiring = wiring + self.registry.wiring()
            if self.kind == "dood":
                self.registry.install_host_trust()
            variables = [Variable(spec.user_variable, self.registry.username, masked=True, public=False),
                         Variable(spec.password_variable, self.registry.password, masked=True, public=False),
                         Variable(spec.address_variable, spec.hostname, masked=False, public=False)]
        if self.kind == "dind":
            wiring = wiring + shared_mirror(self.client).wiring()
        return variables, wiring

    def _runner(self, config: RunnerConfig, wiring: Wiring, project: Project):
        wired = config.with_wiring(extra_hosts=list(wiring.extra_hosts), volumes=list(wiring.volumes))
        if self.options.pull_policy:
            wired = _with_pull_policy(wired, self.options.pull_policy)
        config_toml = render_toml(wired.to_dict())
        runner_class = InProcessRunner if self.options.in_process else RunnerContainer
        runner = runner_class(self.client, config_toml, project.repo_dir, self.scenario.watch_paths,
                              runner_version=self.options.runner_version).start()
        self.stack.callback(runner.close)
        return runner

    def _run_stages(self, runner, compiled, snapshots, concurrent: int = 1) -> list[JobResult]:
        results: list[JobResult] = []
        failed = False
        for stage in compiled.stages:
            if concurrent > 1:
                stage_results = self._run_stage_at_once(runner, compiled, stage, snapshots, failed, concurrent)
                results += stage_results
                failed = failed or any(result.status not in ("success", "skipped") and not job.allow_failure
                                       for result, job in zip(stage_results, _stage_jobs(compiled, stage)))
                continue
            for job in (j for j in compiled.jobs if j.stage == stage):
                reason = self._skip_reason(job, failed)
                if reason:
                    results.append(JobResult(job.name, stage, "skipped", reason=reason))
                    continue
                result = self._run_job(runner, job, snapshots)
                results.append(result)
                failed = failed or (result.status != "success" and not job.allow_failure)
        return results

    def _run_stage_at_once(self, runner, compiled, stage: str, snapshots, failed: bool,
                           concurrent: int) -> list[JobResult]:
        """Run the jobs of ``stage`` in up to ``concurrent`` runner slots at once (``concurrent = N``).

        As in GitLab, jobs of one stage do not wait for each other, so a failure in the stage
        affects only later stages.
        """
        jobs = _stage_jobs(compiled, stage)
        reasons = {job.name: self._skip_reason(job, failed) for job in jobs}
        runnable = [job for job in jobs if not reasons[job.name]]
        finished = stage_jobs.run_stage(
            runnable, lambda job, slot: self._run_job(runner, job, snapshots, slot), concurrent)
        by_name = {result.name: result for result in finished}
        return [by_name.get(job.name) or JobResult(job.name, stage, "skipped", reason=reasons[job.name])
                for job in jobs]

    def _skip_reason(self, job: CompiledJob, failed: bool) -> str:
        """Return why ``job`` does not run ("" when it runs): --job selection, ``when``, or a failure."""
        if self.options.jobs and job.name not in self.options.jobs:
            return "not selected by --job"
        if _should_run(job, failed):
            return ""
        return f"when: {job.when}" if job.when in ("never", "manual", "on_failure") else "an earlier job failed"

    def _run_job(self, runner, job: CompiledJob, snapshots, concurrent_id: int = 0) -> JobResult:
        log.info("job %s (stage %s) starting in %s mode", job.name, job.stage, self.mode)
        started = time.monotonic()
        started_at = time.time()
        chunks: list[str] = []
        payload = job.payload
        if self.options.engine_line is not None:
            payload = substitute_payload_images(payload, self.options.engine_line)
        details = runner.run_job(payload, chunks.append, concurrent_id=concurrent_id)
        trace = mask("".join(chunks), self.secrets)

        for observed in details.get("snapshots", []):
            snapshots.append(placement_module.Snapshot.from_dict(observed))
        snapshots.append(placement_module.snapshot_engine(self.client, placement_module.HOST,
                                                          f"after {job.name}", self.scenario.watch_paths))
        result = JobResult(job.name, job.stage, details.get("status", "failed"), details.get("exit_code"),
                           trace, time.monotonic() - started, details, started_at, _docker_host(job.payload))
        log.info("job %s finished: %s in %.1f s", job.name, result.status, result.duration)
        return result

    def _remove_what_jobs_left(self, baseline: placement_module.Snapshot) -> None:
        """Remove containers, images and watched paths that jobs created on the host engine.

        In DooD a job's own ``docker run`` leaves containers on the host that carry no harness
        label. They are found by comparing with the snapshot taken before the first job. Labelled
        containers are left to their owners, so runs in parallel threads keep their runners,
        registries and services.
        NOTE: anything unlabelled that another process creates on the same engine during the run
        is removed too. A disposable sandbox engine per session would remove that risk.
        """
        final = placement_module.snapshot_engine(self.client, placement_module.HOST, "teardown",
                                                 self.scenario.watch_paths)
        known = {c.name for c in baseline.containers}
        for record in final.containers:
            if record.name not in known and not _is_managed(self.client, record.id):
                _ignore_missing(lambda: self.client.containers.get(record.id).remove(force=True, v=True))
                log.info("removed container %s that a job left on the host engine", record.name)
        for image in set(final.images) - set(baseline.images):
            if _is_stand_in(self.client, image):
                continue
            _ignore_missing(lambda: self.client.images.remove(image, force=True))
            log.info("removed image %s that a job built on the host engine", image)
        for path in set(final.paths) - set(baseline.paths):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed host path %s that a job created", path)


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


def _stage_jobs(compiled, stage: str) -> list[CompiledJob]:
    return [job for job in compiled.jobs if job.stage == stage]


def _should_run(job: CompiledJob, failed: bool) -> bool:
    if job.when in ("never", "manual"):
        return False
    if job.when == "always":
        return True
    if job.when == "on_failure":
        return failed
    return not failed


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
    """Call ``remove``; a resource already gone, or already being removed by its owner, is fine."""
    try:
        remove()
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as error:
        # Another run's teardown on the same engine may be removing the same container.
        if error.status_code != 409 or "already in progress" not in str(error.explanation or ""):
            raise
        log.debug("removal of %s is already in progress elsewhere", error)
