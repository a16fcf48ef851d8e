"""GitLab Runner ``config.toml`` -> validated runner settings for the harness docker executor.

Standard library only: this module is also imported inside the runner container, which has
neither PyYAML nor a recent docker-py. :meth:`RunnerConfig.to_dict` and
:meth:`RunnerConfig.from_dict` carry a config into that container as JSON.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, NoReturn

from harness.errors import InputError, unknown_key_fix

log = logging.getLogger(__name__)

SUPPORTED_EXECUTORS = ("docker",)
PULL_POLICIES = ("always", "if-not-present", "never")
DEFAULT_WAIT_FOR_SERVICES = 30  # GitLab Runner's DefaultWaitForServicesTimeout, seconds

# Keys that GitLab Runner accepts but the harness does not apply: each one logs a warning. Any
# other unknown key is an error.
UNSUPPORTED_GLOBAL_KEYS = {"log_level", "log_format", "listen_address", "sentry_dsn",
                           "shutdown_timeout", "connection_max_age", "session_server"}
UNSUPPORTED_RUNNER_KEYS = {
    "id", "token_obtained_at", "token_expires_at", "tls-ca-file", "tls-cert-file",
    "tls-key-file", "shell", "clone_url", "output_limit", "request_concurrency",
    "pre_get_sources_script", "post_get_sources_script", "pre_build_script", "post_build_script",
    "debug_trace_disabled", "unhealthy_requests_limit", "unhealthy_interval", "cache",
    "custom_build_dir", "referees", "machine", "kubernetes", "custom", "ssh", "parallels",
    "virtualbox", "autoscaler", "system_id",
}
UNSUPPORTED_DOCKER_KEYS = {
    "host", "tls_cert_path", "tls_verify", "cpuset_cpus", "cpuset_mems", "cpus", "cpu_shares",
    "dns", "dns_search", "userns_mode", "cap_add", "cap_drop", "oom_kill_disable",
    "oom_score_adjust", "security_opt", "services_security_opt", "devices", "services_devices",
    "device_cgroup_rules", "gpus", "disable_entrypoint_overwrite", "memory", "memory_swap",
    "memory_reservation", "cgroup_parent", "shm_size", "sysctls", "tmpfs", "services_tmpfs",
    "links", "volumes_from", "volume_driver", "user", "group_add", "ulimit", "runtime",
    "isolation", "mac_address", "allowed_images", "allowed_services", "allowed_pull_policies",
    "allowed_users", "enable_ipv6", "container_labels", "log_options", "helper_image_flavor",
    "helper_image_autoset_arch_and_os", "service_memory", "service_memory_swap",
    "service_memory_reservation", "service_cpus", "service_cpu_shares", "service_cpuset_cpus",
    "service_gpus", "services_limit", "ipcmode", "privileged_helper",
}

# Field kinds: "string", "boolean", "integer", "strings" (a list of strings), "pull_policy".
RUNNER_FIELDS = {"name": "string", "url": "string", "token": "string", "executor": "string",
                 "limit": "integer", "builds_dir": "string", "cache_dir": "string",
                 "environment": "strings"}
DOCKER_FIELDS = {
    "image": "string", "privileged": "boolean", "services_privileged": "boolean",
    "allowed_privileged_images": "strings", "allowed_privileged_services": "strings",
    "volumes": "strings", "extra_hosts": "strings", "network_mode": "string",
    "disable_cache": "boolean", "cache_dir": "string", "pull_policy": "pull_policy",
    "wait_for_services_timeout": "integer", "network_mtu": "integer", "helper_image": "string",
    "hostname": "string", "volume_keep": "boolean", "share_builds_with_services": "boolean",
}
SERVICE_FIELDS = {"name": "string", "alias": "string", "command": "strings",
                  "entrypoint": "strings", "environment": "strings"}
_TYPE_NAMES = {"string": "a string", "boolean": "true or false", "integer": "an integer",
               "strings": "a list of strings", "pull_policy": "a string or a list of strings"}


@dataclass(frozen=True)
class ServiceConfig:
    """A ``[[runners.docker.services]]`` entry, started before the job's own services."""

    name: str
    alias: str = ""
    command: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    environment: tuple[str, ...] = ()


@dataclass(frozen=True)
class DockerConfig:
    """The ``[runners.docker]`` table.

    ``services_privileged`` None means unset, so services follow ``privileged``. An empty
    ``pull_policy`` means GitLab's default, ``always``.
    """

    image: str = ""
    privileged: bool = False
    services_privileged: bool | None = None
    allowed_privileged_images: tuple[str, ...] = ()
    allowed_privileged_services: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    network_mode: str = ""
    disable_cache: bool = False
    cache_dir: str = ""
    pull_policy: tuple[str, ...] = ()
    wait_for_services_timeout: int = 0
    network_mtu: int = 0
    helper_image: str = ""
    hostname: str = ""
    volume_keep: bool = False
    # Not a GitLab Runner key: false gives services no builds volume, as some CI emulators do.
    share_builds_with_services: bool = True
    services: tuple[ServiceConfig, ...] = ()

    @property
    def services_wait_seconds(self) -> int | None:
        """Seconds to wait for services: 0 means the 30 s default, negative means no wait (None)."""
        if self.wait_for_services_timeout < 0:
            return None
        return self.wait_for_services_timeout or DEFAULT_WAIT_FOR_SERVICES

    @property
    def pull_policies(self) -> tuple[str, ...]:
        """The pull policies in order, ``("always",)`` when none is configured."""
        return self.pull_policy or ("always",)

    @property
    def service_privileged(self) -> bool:
        """Whether service containers are privileged before the allow-list is applied."""
        return self.privileged if self.services_privileged is None else self.services_privileged


@dataclass(frozen=True)
class RunnerSettings:
    """One ``[[runners]]`` entry; ``environment`` contains ``NAME=value`` strings."""

    name: str = ""
    url: str = ""
    token: str = ""
    executor: str = "docker"
    limit: int = 0
    builds_dir: str = ""
    cache_dir: str = ""
    environment: tuple[str, ...] = ()
    docker: DockerConfig = field(default_factory=DockerConfig)
    feature_flags: Mapping[str, bool] = field(default_factory=dict)

    def feature_flag(self, name: str, variables: Mapping[str, str] | None = None,
                     default: bool = False) -> bool:
        """Return whether feature flag ``name`` is on for a job.

        ``[runners.feature_flags]`` wins over job variables, as in GitLab Runner; a variable
        is read like Go's ``strconv.ParseBool`` and an unparsable value counts as off.
        """
        if name in self.feature_flags:
            return self.feature_flags[name]
        value = (variables or {}).get(name)
        if value is None or value == "":
            return default
        if value in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if value not in ("0", "f", "F", "FALSE", "false", "False"):
            log.warning("Feature flag %s has the invalid value %r; treating it as off", name, value)
        return False


@dataclass(frozen=True)
class RunnerConfig:
    """A whole ``config.toml``; :attr:`runner` is the ``[[runners]]`` entry the harness runs."""

    path: str
    runners: tuple[RunnerSettings, ...]
    concurrent: int = 1
    check_interval: int = 0
    selected: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def runner(self) -> RunnerSettings:
        """The selected ``[[runners]]`` entry."""
        return self.runners[self.selected]

    @property
    def docker(self) -> DockerConfig:
        """The ``[runners.docker]`` table of the selected runner."""
        return self.runner.docker

    def to_dict(self) -> dict[str, Any]:
        """Return the config as the JSON-serialisable dict of its ``config.toml`` tables.

        Unset options (``services_privileged``) are left out, and the runner selection is not
        part of the dict, so pass ``runner.name`` to :meth:`from_dict` to keep it.
        """
        return {
            "concurrent": self.concurrent,
            "check_interval": self.check_interval,
            "runners": [_runner_to_table(runner) for runner in self.runners],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "<dict>",
                  runner_name: str | None = None) -> RunnerConfig:
        """Build a config from a ``config.toml``-shaped dict such as :meth:`to_dict` returns.

        Raises:
            InputError: the dict is not a valid config or has no runner called ``runner_name``;
                messages name ``path``.
        """
        return _select(_parse(data, path), runner_name)

    def with_wiring(self, volumes: tuple[str, ...] | list[str] = (),
                    extra_hosts: tuple[str, ...] | list[str] = (),
                    environment: tuple[str, ...] | list[str] = ()) -> RunnerConfig:
        """Return a copy where every runner also gets the harness's volumes, hosts and env.

        Entries already present are not repeated; the user's entries keep their order in front.
        """
        def append(current: tuple[str, ...], extra: tuple[str, ...] | list[str]) -> tuple[str, ...]:
            return current + tuple(item for item in dict.fromkeys(extra) if item not in current)

        runners = tuple(
            replace(runner,
                    environment=append(runner.environment, environment),
                    docker=replace(runner.docker,
                                   volumes=append(runner.docker.volumes, volumes),
                                   extra_hosts=append(runner.docker.extra_hosts, extra_hosts)))
            for runner in self.runners
        )
        return replace(self, runners=runners)


def load_runner_config(path: str | Path, runner_name: str | None = None) -> RunnerConfig:
    """Read and validate a GitLab Runner ``config.toml``.

    Args:
        path: the file.
        runner_name: the ``name`` of the ``[[runners]]`` entry to select; the first when None.

    Raises:
        InputError: the file is missing, is not TOML, has an unknown key, a wrong type, an
            unsupported executor, or no runner called ``runner_name``. Keys that GitLab Runner
            accepts but the harness does not apply produce warnings, which are logged and kept in
            ``RunnerConfig.warnings``.
    """
    file = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise InputError(file, "", "file not found", "pass the path of the runner's config.toml") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(file, "", f"cannot read the file: {error}",
                         "check the file permissions and that it is UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(file, "", f"invalid TOML: {error}", "fix the syntax at that position") from error

    return _select(_parse(data, file), runner_name)


def _select(config: RunnerConfig, runner_name: str | None) -> RunnerConfig:
    if runner_name is None:
        return config
    names = [runner.name for runner in config.runners]
    if runner_name not in names:
        raise InputError(config.path, "runners", f'no runner named "{runner_name}"',
                         f"use one of: {', '.join(repr(name) for name in names)}")
    return replace(config, selected=names.index(runner_name))


def _parse(data: Mapping[str, Any], file: str) -> RunnerConfig:
    reader = _Reader(file)
    reader.check_keys(data, {"concurrent", "check_interval", "runners"}, "", UNSUPPORTED_GLOBAL_KEYS)
    concurrent = reader.value(data.get("concurrent", 1), "integer", "concurrent")
    if concurrent < 1:
        reader.fail("concurrent", f"must be at least 1, got {concurrent}", "set concurrent = 1 or more")

    tables = data.get("runners")
    if not isinstance(tables, list) or not tables:
        reader.fail("runners", "missing [[runners]] entry",
                    'add a [[runners]] table with executor = "docker" and a [runners.docker] table')
    runners = tuple(reader.runner(table, f"runners[{index}]") for index, table in enumerate(tables))
    return RunnerConfig(
        path=file,
        runners=runners,
        concurrent=concurrent,
        check_interval=reader.value(data.get("check_interval", 0), "integer", "check_interval"),
        warnings=tuple(reader.warnings),
    )


class _Reader:
    """Validates tables of one file; every error names the file and a key path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.warnings: list[str] = []

    def fail(self, key: str, problem: str, fix: str) -> NoReturn:
        raise InputError(self.file, key, problem, fix)

    def check_keys(self, table: Mapping[str, Any], known: set[str], key: str,
                   unsupported: set[str]) -> None:
        """Raise InputError on an unknown key; warn about each ``unsupported`` one."""
        for name in table:
            if name in known:
                continue
            path = f"{key}.{name}" if key else name
            if name not in unsupported:
                self.fail(path, "unknown key", unknown_key_fix(name, known, unsupported))
            problem = "is not supported by the harness and is ignored"
            log.warning("%s: %s: %s", self.file, path, problem)
            self.warnings.append(f"{self.file}: {path}: {problem}")

    def value(self, raw: Any, kind: str, key: str) -> Any:
        """Return ``raw`` checked against ``kind``; lists come back as tuples."""
        valid = {
            "string": isinstance(raw, str),
            "boolean": isinstance(raw, bool),
            "integer": isinstance(raw, int) and not isinstance(raw, bool),
            "strings": isinstance(raw, list) and all(isinstance(item, str) for item in raw),
            "pull_policy": isinstance(raw, str) or (
                isinstance(raw, list) and all(isinstance(item, str) for item in raw)),
        }[kind]
        if not valid:
            self.fail(key, f"expected {_TYPE_NAMES[kind]}, got {_toml_type(raw)}",
                      f"write {_TYPE_NAMES[kind]}, for example {_EXAMPLES[kind]}")
        if kind == "pull_policy":
            return (raw,) if isinstance(raw, str) else tuple(raw)
        return tuple(raw) if kind == "strings" else raw

    def table(self, table: Any, spec: dict[str, str], key: str) -> dict[str, Any]:
        if not isinstance(table, Mapping):
            self.fail(key, f"expected a table, got {_toml_type(table)}", f"write it as [{key}]")
        return {name: self.value(table[name], kind, f"{key}.{name}")
                for name, kind in spec.items() if name in table}

    def runner(self, table: Any, key: str) -> RunnerSettings:
        values = self.table(table, RUNNER_FIELDS, key)
        self.check_keys(table, {*RUNNER_FIELDS, "docker", "feature_flags"}, key,
                        UNSUPPORTED_RUNNER_KEYS)
        executor = values.get("executor")
        if executor not in SUPPORTED_EXECUTORS:
            problem = "missing executor" if executor is None else f'executor "{executor}" is not supported'
            self.fail(f"{key}.executor", problem,
                      f"set executor = \"docker\"; supported: {', '.join(SUPPORTED_EXECUTORS)}")
        self.environment(values.get("environment", ()), f"{key}.environment")
        if "docker" not in table:
            self.fail(f"{key}.docker", "missing [runners.docker] table",
                      'add [runners.docker] with at least image = "..."')

        return RunnerSettings(**values, docker=self.docker(table["docker"], f"{key}.docker"),
                              feature_flags=self.feature_flags(table.get("feature_flags", {}),
                                                               f"{key}.feature_flags"))

    def docker(self, table: Any, key: str) -> DockerConfig:
        values = self.table(table, DOCKER_FIELDS, key)
        self.check_keys(table, {*DOCKER_FIELDS, "services"}, key, UNSUPPORTED_DOCKER_KEYS)
        for policy in values.get("pull_policy", ()):
            if policy not in PULL_POLICIES:
                self.fail(f"{key}.pull_policy", f'unknown pull policy "{policy}"',
                          f"use {', '.join(PULL_POLICIES)}")

        services = table.get("services", [])
        if not isinstance(services, list):
            self.fail(f"{key}.services", f"expected a list of tables, got {_toml_type(services)}",
                      "write each service as a [[runners.docker.services]] table")
        values["services"] = tuple(self.service(service, f"{key}.services[{index}]")
                                   for index, service in enumerate(services))
        return DockerConfig(**values)

    def service(self, table: Any, key: str) -> ServiceConfig:
        values = self.table(table, SERVICE_FIELDS, key)
        self.check_keys(table, set(SERVICE_FIELDS), key, set())
        if not values.get("name"):
            self.fail(f"{key}.name", "missing service image name", 'add name = "docker:dind" or similar')
        self.environment(values.get("environment", ()), f"{key}.environment")
        return ServiceConfig(**values)

    def feature_flags(self, table: Any, key: str) -> dict[str, bool]:
        if not isinstance(table, Mapping):
            self.fail(key, f"expected a table, got {_toml_type(table)}", "write it as [runners.feature_flags]")
        flags = {}
        for name, raw in table.items():
            if not name.startswith("FF_"):
                self.fail(f"{key}.{name}", "unknown feature flag",
                          f"feature flag names start with FF_, for example FF_{name}")
            flags[name] = self.value(raw, "boolean", f"{key}.{name}")
        return flags

    def environment(self, entries: tuple[str, ...], key: str) -> None:
        for index, entry in enumerate(entries):
            if "=" not in entry or entry.startswith("="):
                self.fail(f"{key}[{index}]", f'"{entry}" is not NAME=value',
                          'write each entry as "NAME=value"')


_EXAMPLES = {"string": '"docker:24.0"', "boolean": "true", "integer": "30",
             "strings": '["/cache"]', "pull_policy": '["if-not-present"]'}


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _runner_to_table(runner: RunnerSettings) -> dict[str, Any]:
    """Return the runner as the ``[[runners]]`` table it was read from, lists as lists."""
    table = _plain(runner, exclude={"docker", "feature_flags"})
    docker = _plain(runner.docker, exclude={"services"})
    docker["services"] = [_plain(service) for service in runner.docker.services]
    table["docker"] = docker
    table["feature_flags"] = dict(runner.feature_flags)
    return table


def _plain(instance: Any, exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """Return a dataclass's fields as TOML values; None (an unset option) is left out."""
    result = {}
    for item in fields(instance):
        value = getattr(instance, item.name)
        if item.name in exclude or value is None:
            continue
        result[item.name] = list(value) if isinstance(value, tuple) else value
    return result
