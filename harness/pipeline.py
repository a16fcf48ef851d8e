""".gitlab-ci.yml -> job payloads in the shape GitLab sends a runner from ``POST /jobs/request``.

:func:`load_pipeline` parses and validates the file and resolves ``extends``, ``!reference``,
``default:`` and ``inherit:``. :func:`compile_pipeline` evaluates ``workflow:rules``, ``rules`` and
``only``/``except`` for one branch push, as the GitLab server does, and builds one payload per job.
Variables in scripts are left for the runner to expand. Nothing here talks to a Docker daemon.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.pipeline_keywords import Image, Service
from harness.pipeline_reader import DocumentReader, Job, Pipeline, read_yaml
from harness.pipeline_rules import RefFilter, Rule, filter_matches, rule_matches
from harness.project import Project
from harness.variables import (
    PipelineContext, Variable, job_variables, masked_values, predefined_variables,
)

__all__ = [
    "CompiledJob", "CompiledPipeline", "Image", "Job", "Pipeline", "RefFilter", "Rule", "Service",
    "Variable", "compile_pipeline", "load_pipeline",
]

log = logging.getLogger(__name__)

DEFAULT_SERVER_URL = "http://gitlab.harness.invalid"
DEFAULT_TIMEOUT = 3600  # GitLab's default project timeout, 1 h
DEFAULT_DEPTH = 20  # GitLab's default git depth for new projects; older GitLab used 50
FAILURE_REASONS = (
    "unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
    "runner_system_failure", "missing_dependency_failure", "runner_unsupported",
    "job_execution_timeout", "unmet_prerequisites",
)


@dataclass(frozen=True)
class CompiledJob:
    """A job GitLab would create, with the payload a runner receives for it."""

    name: str
    stage: str
    when: str
    allow_failure: bool
    allow_failure_exit_codes: tuple[int, ...]
    payload: dict[str, Any]

    @property
    def id(self) -> int:
        """The job id, also ``CI_JOB_ID``."""
        return self.payload["id"]

    @property
    def token(self) -> str:
        """The job token, also ``CI_JOB_TOKEN``."""
        return self.payload["token"]

    def masked_values(self) -> list[str]:
        """Return the values the job log must show as ``[MASKED]``."""
        return masked_values(self.payload["variables"])


@dataclass(frozen=True)
class CompiledPipeline:
    """The jobs of one pipeline in stage order; ``jobs`` is empty when workflow rules create none."""

    stages: list[str]
    jobs: list[CompiledJob]

    def job(self, name: str) -> CompiledJob:
        """Return the job called ``name``; raises KeyError when it was not created."""
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a ``.gitlab-ci.yml``.

    Unknown or ignored keys are logged as warnings and kept in ``Pipeline.warnings``.

    Raises:
        InputError: the file is missing, is not valid YAML, or breaks a GitLab CI rule. The
            message names the file, the key path (``build.services[1].alias``) and the fix.
    """
    document = read_yaml(Path(path))
    return DocumentReader(str(path)).read(document)


@dataclass(frozen=True)
class _Outcome:
    """The state a job enters the pipeline with, after its rules or only/except are evaluated."""

    when: str
    allow_failure: bool
    exit_codes: tuple[int, ...]
    variables: tuple[Variable, ...] = ()


def compile_pipeline(
    pipeline: Pipeline,
    project: Project,
    branch: str | None = None,
    variables: tuple[Variable, ...] | list[Variable] = (),
    *,
    server_url: str = DEFAULT_SERVER_URL,
    pipeline_id: int = 1,
    first_job_id: int = 1,
    protected: bool | None = None,
    registry: str | None = None,
    depth: int = DEFAULT_DEPTH,
    created_at: str | None = None,
) -> CompiledPipeline:
    """Create the jobs of a push pipeline for ``branch`` and their runner payloads.

    Args:
        pipeline: the loaded ``.gitlab-ci.yml``.
        project: the project; another existing ``branch`` of its repository may be chosen.
        branch: the pushed branch, ``project.ref`` when None.
        variables: project CI/CD settings variables; they override YAML variables.
        server_url: the fake GitLab's base URL, used in ``CI_SERVER_*`` and the clone URL.
        pipeline_id: ``CI_PIPELINE_ID`` and ``CI_PIPELINE_IID``.
        first_job_id: id of the first created job; later jobs count up in stage order.
        protected: whether the ref is protected; None means only the default branch is.
        registry: ``CI_REGISTRY`` host, omitted when None.
        depth: ``git_info.depth``, the shallow-clone depth.
        created_at: ``CI_PIPELINE_CREATED_AT`` (ISO 8601 UTC), now when None.

    Raises:
        InputError: the branch does not exist or a masked settings variable cannot be masked.
    """
    if branch and branch != project.ref:
        project = project.for_branch(branch)
    settings = tuple(variables)
    _check_settings(settings)
    context = PipelineContext(
        project=project,
        server_url=server_url.rstrip("/"),
        pipeline_id=pipeline_id,
        created_at=created_at or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        config_path=Path(pipeline.path).name,
        protected=project.ref == project.default_branch if protected is None else protected,
        registry=registry,
    )
    stages = list(pipeline.stages)

    predefined = predefined_variables(context)
    workflow_variables = _workflow_variables(pipeline, context, predefined, settings)
    if workflow_variables is None:
        log.info("workflow:rules of %s create no pipeline for branch %s", pipeline.path, project.ref)
        return CompiledPipeline(stages, [])
    layers = _Layers(predefined, workflow_variables, settings)

    jobs = _create_jobs(pipeline, context, layers, first_job_id, depth)
    log.info("Compiled %d of %d jobs of %s for branch %s", len(jobs), len(pipeline.jobs),
             pipeline.path, project.ref)
    return CompiledPipeline(stages, jobs)


def _create_jobs(pipeline: Pipeline, context: PipelineContext, layers: _Layers, first_job_id: int,
                 depth: int) -> list[CompiledJob]:
    """Return the jobs GitLab would create, in stage order and then file order."""
    created = []
    for job in sorted(pipeline.jobs, key=lambda job: pipeline.stages.index(job.stage)):
        outcome = _decide(job, context, layers)
        if outcome is None:
            log.debug("Job %s is not created for branch %s", job.name, context.project.ref)
        else:
            created.append((job, outcome))

    return [_compile_job(job, outcome, context, layers, job_id, depth)
            for job_id, (job, outcome) in enumerate(created, start=first_job_id)]


def _check_settings(settings: tuple[Variable, ...]) -> None:
    for variable in settings:
        if not isinstance(variable, Variable):
            raise TypeError(f"expected harness.variables.Variable, got {type(variable).__name__}")
        # GitLab rejects such values too: masking a short or multi-line value breaks the log.
        if variable.masked and (len(variable.value) < 8 or "\n" in variable.value):
            raise InputError("CI/CD settings variables", variable.key,
                             "a masked value must be a single line of at least 8 characters",
                             "use a longer value or do not mask it")


def _merge(*layers: list[Variable] | tuple[Variable, ...]) -> list[Variable]:
    """Merge variable layers, lowest precedence first; a later key replaces an earlier one."""
    merged: dict[str, Variable] = {}
    for layer in layers:
        for variable in layer:
            merged.pop(variable.key, None)
            merged[variable.key] = variable
    return list(merged.values())


def _environment(variables: list[Variable]) -> dict[str, str]:
    return {variable.key: variable.value for variable in variables}


@dataclass(frozen=True)
class _Layers:
    """The variable layers every job of a pipeline shares."""

    predefined: list[Variable]
    workflow: tuple[Variable, ...]
    settings: tuple[Variable, ...]

    def for_job(self, job: Job, job_predefined: list[Variable],
                rule_variables: tuple[Variable, ...] = ()) -> list[Variable]:
        """Return the job's variables, from GitLab's lowest precedence to its highest."""
        return _merge(self.predefined, job_predefined, job.global_variables, self.workflow,
                      job.variables, rule_variables, self.settings)


def _workflow_variables(pipeline: Pipeline, context: PipelineContext, base: list[Variable],
                        settings: tuple[Variable, ...]) -> tuple[Variable, ...] | None:
    """Return the variables of the matching workflow rule, or None when no pipeline is created."""
    if pipeline.workflow_rules is None:
        return ()
    environment = _environment(_merge(base, pipeline.variables, settings))
    for rule in pipeline.workflow_rules:
        if rule_matches(rule, environment, context.project):
            return None if rule.when == "never" else rule.variables
    return None


def _decide(job: Job, context: PipelineContext, layers: _Layers) -> _Outcome | None:
    """Return how the job enters the pipeline, or None when GitLab would not create it.

    Conditions see every variable except ``rules:variables``, and no job id or token yet.
    """
    known = job_variables(context, job.name, job.stage, None, None)
    environment = _environment(layers.for_job(job, known))
    project = context.project
    if job.rules is not None:
        return _apply_rules(job, environment, project)

    # NOTE: GitLab rejects a job-level `when: never`; the harness reads it as "never create".
    if job.when == "never":
        return None
    only = job.only or RefFilter(refs=("branches", "tags"))
    if not filter_matches(only, environment, project):
        return None
    if job.except_ is not None and filter_matches(job.except_, environment, project):
        return None
    allow_failure = job.allow_failure if job.allow_failure is not None else job.when == "manual"
    return _Outcome(job.when, allow_failure, job.allow_failure_exit_codes)


def _apply_rules(job: Job, environment: dict[str, str], project: Project) -> _Outcome | None:
    for rule in job.rules or ():
        if not rule_matches(rule, environment, project):
            continue
        when = rule.when or job.when
        if when == "never":
            return None

        # A manual job is optional by default, except when a rule made it manual.
        if rule.allow_failure is not None:
            return _Outcome(when, rule.allow_failure, (), rule.variables)
        if job.allow_failure is not None:
            return _Outcome(when, job.allow_failure, job.allow_failure_exit_codes, rule.variables)
        return _Outcome(when, when == "manual" and rule.when is None, (), rule.variables)
    return None


def _compile_job(job: Job, outcome: _Outcome, context: PipelineContext, layers: _Layers,
                 job_id: int, depth: int) -> CompiledJob:
    project = context.project
    token = f"glcbt-{secrets.token_hex(10)}"
    timeout = job.timeout or DEFAULT_TIMEOUT
    variables = layers.for_job(job, job_variables(context, job.name, job.stage, job_id, token),
                               outcome.variables)

    payload = {
        "id": job_id,
        "token": token,
        "allow_git_fetch": False,
        "job_info": {"name": job.name, "stage": job.stage, "project_id": project.id,
                     "project_name": project.name, "pipeline_id": context.pipeline_id},
        "git_info": {"repo_url": context.repository_url(token), "ref": project.ref,
                     "sha": project.sha, "before_sha": project.before_sha, "ref_type": "branch",
                     "refspecs": [f"+refs/heads/{project.ref}:refs/remotes/origin/{project.ref}"],
                     "depth": depth, "protected": context.protected},
        "runner_info": {"timeout": timeout},
        "variables": [variable.to_payload() for variable in variables],
        "steps": _steps(job, timeout),
        "image": job.image.to_payload() if job.image else {"name": ""},
        "services": [service.to_payload() for service in job.services],
        "artifacts": [],
        "cache": [],
        "credentials": [],
        "dependencies": [],
        "features": {"trace_sections": True, "failure_reasons": list(FAILURE_REASONS)},
    }
    return CompiledJob(job.name, job.stage, outcome.when, outcome.allow_failure,
                       outcome.exit_codes, payload)


def _steps(job: Job, timeout: int) -> list[dict[str, Any]]:
    """Return the steps: before_script and script merged into one, after_script on its own."""
    steps = [{"name": "script", "script": [*job.before_script, *job.script], "timeout": timeout,
              "when": "on_success", "allow_failure": False}]
    if job.after_script:
        steps.append({"name": "after_script", "script": list(job.after_script),
                      "timeout": timeout, "when": "always", "allow_failure": True})
    return steps
