"""One job's derived facts: names, directories, strategy and the complete variable list."""

from __future__ import annotations

import dataclasses
import posixpath
import urllib.parse
from collections.abc import Mapping

from harness.executor import naming, volumes
from harness.executor.compat import RunnerCompat
from harness.executor.jobvars import JobVariables, Variable, internal
from harness.executor.settings import ExecutorSettings
from harness.executor.sources import git_strategy

DEFAULT_JOB_TIMEOUT = 7200
RUNNER_REVISION = "harness"
# The runner's job slot when it runs one job at a time. With ``concurrent = N`` the slots are 0 to N - 1.
CONCURRENT_ID = 0


def project_path(repo_url: str, project_id: int) -> str:
    """Return ``<namespace>/<project>`` from a clone URL, or ``project-<id>`` when it has no path."""
    path = urllib.parse.urlsplit(repo_url).path.strip("/")
    if path.endswith(".git"):
        path = path[: -len(".git")]
    return path or f"project-{project_id}"


def resolve_feature_flag(name: str, settings: ExecutorSettings, payload_variables: JobVariables) -> bool:
    """Return a feature flag: ``[runners.feature_flags]`` wins over ``environment`` and job variables."""
    if name in settings.feature_flags:
        return settings.feature_flags[name]
    for entry in settings.environment:
        key, _, value = entry.partition("=")
        if key == name:
            return value.strip().lower() in ("1", "t", "true", "yes")
    return payload_variables.get(name).strip().lower() in ("1", "t", "true", "yes")


@dataclasses.dataclass
class JobContext:
    """Everything the stages of one job share; the observer hooks receive it.

    Attributes:
        client: The docker-py client the executor drives.
        payload: The job payload as GitLab sends it.
        prefix: Per-job container prefix ``runner-<short>-project-<id>-concurrent-<n>-<16 hex>``.
        containers: ``{"id", "name", "type"}`` of every container created so far.
    """

    client: object
    payload: Mapping
    settings: ExecutorSettings
    compat: RunnerCompat
    short_token: str
    unique_name: str
    reusable_name: str
    prefix: str
    network_name: str
    per_build_network: bool
    project_dir: str
    shared_builds_dir: bool
    strategy: str
    timeout: int
    image: str
    variables: JobVariables = dataclasses.field(default_factory=JobVariables)
    containers: list[dict] = dataclasses.field(default_factory=list)
    network_mode: str = ""
    concurrent_id: int = CONCURRENT_ID

    @property
    def job_id(self) -> int:
        """The job id from the payload."""
        return int(self.payload.get("id", 0))

    @property
    def project_id(self) -> int:
        """The project id from the payload's ``job_info``."""
        return int((self.payload.get("job_info") or {}).get("project_id", 0))

    @property
    def protected(self) -> bool:
        """True for a protected ref, or when a cache key ends in ``-protected``.

        Always False for runners before 18.4, which gave cache volumes no ``-protected`` suffix.
        """
        if self.compat.cache_volume_naming_pre_18_4:
            return False
        if (self.payload.get("git_info") or {}).get("protected"):
            return True
        return any(str(cache.get("key", "")).endswith("-protected") for cache in self.payload.get("cache") or ())


def build_context(client, payload: Mapping, settings: ExecutorSettings, compat: RunnerCompat,
                  random_hex: str | None = None, concurrent_id: int = CONCURRENT_ID) -> JobContext:
    """Derive names, directories and variables of ``payload`` as the runner does before preparing.

    ``concurrent_id`` is the runner's job slot; it goes into container, volume and network names.
    """
    job_info = payload.get("job_info") or {}
    git_info = payload.get("git_info") or {}
    project_id = int(job_info.get("project_id", 0))
    payload_variables = JobVariables(Variable.from_payload(entry) for entry in payload.get("variables") or ())

    short = naming.short_token(settings.token, legacy=compat.short_token_pre_18_2)
    unique = naming.project_unique_name(short, project_id, concurrent_id)
    if compat.cache_volume_naming_pre_18_4:
        # NOTE: these names hold no system ID, so two sessions that run one token and project on
        # one engine share the volume, as two old runners did. A per-session token would separate them.
        reusable = unique
    else:
        reusable = naming.project_real_unique_name(settings.token, settings.system_id, project_id, concurrent_id)

    shared = volumes.is_host_mounted(settings.builds_dir, list(settings.volumes))
    path = project_path(git_info.get("repo_url", ""), project_id)
    root = posixpath.join(settings.builds_dir, short, str(concurrent_id)) if shared else settings.builds_dir
    timeout = int((payload.get("runner_info") or {}).get("timeout") or 0)

    context = JobContext(
        client=client, payload=payload, settings=settings, compat=compat, short_token=short,
        unique_name=unique, reusable_name=reusable, prefix=naming.random_prefix(unique, random_hex),
        network_name=naming.network_name(short, project_id, concurrent_id, int(payload.get("id", 0)),
                                         legacy=compat.network_name_pre_17_2),
        per_build_network=resolve_feature_flag("FF_NETWORK_PER_BUILD", settings, payload_variables),
        project_dir=posixpath.join(root, path), shared_builds_dir=shared,
        strategy=git_strategy(payload, payload_variables.get),
        timeout=timeout if timeout > 0 else DEFAULT_JOB_TIMEOUT,
        image=str((payload.get("image") or {}).get("name") or settings.image),
        concurrent_id=concurrent_id,
    )
    context.variables = job_variables(context, payload_variables)
    # GitLab Runner expands job variables in the image name, as in ``image: node:$NODE_VERSION``.
    context.image = context.variables.expand_value(context.image)
    return context


def job_variables(context: JobContext, payload_variables: JobVariables) -> JobVariables:
    """Return runner-generated, payload and config variables in the runner's order, expanded."""
    settings = context.settings
    network_mode = settings.network_mode or ""
    before = [
        internal("CI_BUILDS_DIR", settings.builds_dir),
        internal("CI_PROJECT_DIR", context.project_dir),
        internal("CI_CONCURRENT_ID", str(context.concurrent_id)),
        internal("CI_CONCURRENT_PROJECT_ID", str(context.concurrent_id)),
        internal("CI_SERVER", "yes"),
        internal("CI_JOB_STATUS", "running"),
        internal("CI_JOB_TIMEOUT", str(context.timeout)),
        internal("FF_NETWORK_PER_BUILD", str(context.per_build_network).lower()),
    ]
    if context.per_build_network and not network_mode:
        before.append(internal("CI_BUILD_NETWORK_NAME", context.network_name))
    payload = [variable for variable in payload_variables if not variable.key.startswith("FF_")]
    after = [
        internal("CI_DISPOSABLE_ENVIRONMENT", "true"),
        internal("CI_RUNNER_VERSION", context.compat.version),
        internal("CI_RUNNER_REVISION", RUNNER_REVISION),
        internal("CI_RUNNER_EXECUTABLE_ARCH", "linux/amd64"),
        internal("RUNNER_TEMP_PROJECT_DIR", context.project_dir + ".tmp"),
        internal("CI_JOB_IMAGE", context.image),
        internal("CI_RUNNER_SHORT_TOKEN", context.short_token),
    ]
    for entry in settings.environment:
        key, _, value = entry.partition("=")
        after.append(internal(key, value))
    return JobVariables([*before, *payload, *after]).expanded()
