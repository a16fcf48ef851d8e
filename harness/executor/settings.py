"""The runner settings the executor reads, taken from a runner config in ``config.toml`` terms.

The executor depends only on the key names of GitLab Runner's ``config.toml`` (``[[runners]]``,
``[runners.docker]``, ``[runners.feature_flags]``), so it accepts the ``RunnerConfig`` of
``harness.runner_config`` through its ``to_dict()`` as well as a plain dict of the same shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping

from harness import labels
from harness.errors import InputError

DEFAULT_HELPER_IMAGE = "dind-dood-harness/helper:latest"
DEFAULT_TOKEN = "glrt-t1_harnessrunnertokenxyz"


def session_system_id(session: str | None = None) -> str:
    """Return the runner system ID of a harness session: ``s_`` and 12 hex characters.

    GitLab Runner makes one system ID per runner host and stores it in ``.runner_system_id``.
    Each harness session plays one runner host, so its ID derives from the session id. Reusable
    cache volume names hash the system ID, so two sessions with one engine and one token get a
    volume each. A shared volume outlived both sessions: the first teardown failed while the
    second session's job still mounted it, and the second session never removed it.
    """
    digest = hashlib.sha256((session or labels.session_id()).encode()).hexdigest()
    return "s_" + digest[:12]


def _strings(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(item) for item in value)


def _boolean(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "yes", "on")
    return bool(value)


@dataclasses.dataclass(frozen=True)
class ExecutorSettings:
    """One ``[[runners]]`` entry, reduced to what the docker executor uses.

    Field names follow ``config.toml``; ``docker_cache_dir`` is ``[runners.docker] cache_dir``
    and ``cache_dir`` the runner-level one.
    """

    name: str = "harness-runner"
    token: str = DEFAULT_TOKEN
    system_id: str = dataclasses.field(default_factory=session_system_id)
    builds_dir: str = "/builds"
    cache_dir: str = "/cache"
    environment: tuple[str, ...] = ()
    feature_flags: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    image: str = ""
    privileged: bool = False
    services_privileged: bool | None = None
    allowed_privileged_images: tuple[str, ...] = ()
    allowed_privileged_services: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    volume_keep: bool = False
    share_builds_with_services: bool = True
    network_mode: str = ""
    network_mtu: int = 0
    enable_ipv6: bool = False
    disable_cache: bool = False
    docker_cache_dir: str = ""
    # NOTE: GitLab Runner defaults to "always". An empty tuple here means "if-not-present",
    # because the harness is offline and "always" could only pull from a loopback registry.
    pull_policy: tuple[str, ...] = ()
    wait_for_services_timeout: int = 0
    helper_image: str = DEFAULT_HELPER_IMAGE
    extra_hosts: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    hostname: str = ""
    user: str = ""
    services: tuple[Mapping, ...] = ()
    config_file: str = "config.toml"

    @classmethod
    def from_config(cls, config, runner: str | None = None, config_file: str = "config.toml") -> ExecutorSettings:
        """Read a ``RunnerConfig`` (anything with ``to_dict()``) or a config.toml-shaped dict.

        Args:
            config: A whole config (with ``runners``) or one runner's table.
            runner: Name of the ``[[runners]]`` entry; the first one when None.

        Raises:
            InputError: no runner has that name, or the config has no runner.
        """
        if hasattr(config, "to_dict"):
            # A RunnerConfig keeps its runner selection and file path outside to_dict().
            runner = runner or getattr(getattr(config, "runner", None), "name", None) or None
            config_file = str(getattr(config, "path", "") or config_file)
            data = config.to_dict()
        else:
            data = dict(config)
        entry = _select_runner(data, runner, config_file)
        docker_table = entry.get("docker") or {}
        return cls(
            name=str(entry.get("name") or cls.name),
            token=str(entry.get("token") or cls.token),
            system_id=str(entry.get("system_id") or session_system_id()),
            builds_dir=str(entry.get("builds_dir") or cls.builds_dir),
            cache_dir=str(entry.get("cache_dir") or cls.cache_dir),
            environment=_strings(entry.get("environment")),
            feature_flags={str(key): _boolean(value) for key, value in (entry.get("feature_flags") or {}).items()},
            config_file=config_file,
            **_docker_fields(docker_table),
        )

    def services_privileged_flag(self) -> bool:
        """Return ``services_privileged`` when set, else ``privileged``, as the runner decides."""
        return self.privileged if self.services_privileged is None else self.services_privileged


def _select_runner(data: Mapping, runner: str | None, config_file: str) -> Mapping:
    runners = data.get("runners")
    if runners is None:
        return data
    if isinstance(runners, Mapping):
        runners = [runners]
    if not runners:
        raise InputError(config_file, "runners", "the config defines no runner", "add a [[runners]] table")
    if runner is None:
        return runners[0]
    for entry in runners:
        if entry.get("name") == runner:
            return entry
    names = ", ".join(str(entry.get("name")) for entry in runners)
    raise InputError(config_file, "runners", f"no runner is named {runner!r} (found: {names})",
                     "pass one of those names with --runner")


def _docker_fields(table: Mapping) -> dict:
    services_privileged = table.get("services_privileged")
    return {
        "image": str(table.get("image") or ""),
        "privileged": _boolean(table.get("privileged", False)),
        "services_privileged": None if services_privileged is None else _boolean(services_privileged),
        "allowed_privileged_images": _strings(table.get("allowed_privileged_images")),
        "allowed_privileged_services": _strings(table.get("allowed_privileged_services")),
        "volumes": _strings(table.get("volumes")),
        "volume_keep": _boolean(table.get("volume_keep", False)),
        "share_builds_with_services": _boolean(table.get("share_builds_with_services", True)),
        "network_mode": str(table.get("network_mode") or ""),
        "network_mtu": int(table.get("network_mtu") or 0),
        "enable_ipv6": _boolean(table.get("enable_ipv6", False)),
        "disable_cache": _boolean(table.get("disable_cache", False)),
        "docker_cache_dir": str(table.get("cache_dir") or ""),
        "pull_policy": _strings(table.get("pull_policy")),
        "wait_for_services_timeout": int(table.get("wait_for_services_timeout") or 0),
        "helper_image": str(table.get("helper_image") or DEFAULT_HELPER_IMAGE),
        "extra_hosts": _strings(table.get("extra_hosts")),
        "dns": _strings(table.get("dns")),
        "hostname": str(table.get("hostname") or ""),
        "user": str(table.get("user") or ""),
        "services": tuple(table.get("services") or ()),
    }
