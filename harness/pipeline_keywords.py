"""Keyword parsers of ``.gitlab-ci.yml`` shared by jobs, ``default:`` and services.

Every parser validates one value and raises InputError with the file, the key path such as
``build.services[1].alias`` and the fix. An unknown key is an error whose fix names the closest
known key. GitLab keywords that the harness deliberately does not compile (``artifacts``,
``cache``, ``needs`` and the other ``IGNORED_*`` sets) are accepted, and each one logs a warning.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from harness.errors import InputError, unknown_key_fix
from harness.variables import Variable

log = logging.getLogger(__name__)

WHEN_VALUES = ("on_success", "on_failure", "always", "manual", "never")
IMAGE_KEYS = {"name", "entrypoint", "pull_policy", "docker"}
SERVICE_KEYS = IMAGE_KEYS | {"alias", "command", "variables"}
DOCKER_OPTION_KEYS = {"platform", "user"}
VARIABLE_KEYS = {"value", "description", "options", "expand"}
# GitLab's Kubernetes executor options on images and services; the harness runs no such executor.
IGNORED_IMAGE_KEYS = {"kubernetes"}
_UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
          "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600,
          "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400}


@dataclass(frozen=True)
class Image:
    """A job or service image; ``entrypoint`` None keeps the image's own entrypoint."""

    name: str
    entrypoint: tuple[str, ...] | None = None
    pull_policy: tuple[str, ...] = ()
    docker: tuple[tuple[str, str], ...] = ()

    def to_payload(self) -> dict[str, Any]:
        """Return the payload ``image`` object; optional fields appear only when set."""
        payload: dict[str, Any] = {"name": self.name}
        if self.entrypoint is not None:
            payload["entrypoint"] = list(self.entrypoint)
        if self.pull_policy:
            payload["pull_policy"] = list(self.pull_policy)
        if self.docker:
            payload["executor_opts"] = {"docker": dict(self.docker)}
        return payload


@dataclass(frozen=True)
class Service(Image):
    """A ``services:`` entry; ``alias`` is kept verbatim, the executor splits it."""

    alias: str = ""
    command: tuple[str, ...] = ()
    variables: tuple[Variable, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        """Return the payload ``services[]`` object with every list present, empty when unset."""
        payload = super().to_payload()
        payload.update(alias=self.alias, command=list(self.command),
                       entrypoint=list(self.entrypoint or ()),
                       variables=[variable.to_payload() for variable in self.variables])
        return payload


def type_name(value: Any) -> str:
    """Return how an error message names the YAML type of ``value``."""
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number",
             str: "a string", list: "a list", dict: "a mapping"}
    return names.get(type(value), type(value).__name__)


def join_key(prefix: str, name: str) -> str:
    """Return the key path ``prefix.name``, or ``name`` at the top level."""
    return f"{prefix}.{name}" if prefix else name


class KeywordReader:
    """Validates keyword values of one file; every error names the file and a key path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.warnings: list[str] = []

    def fail(self, key: str, problem: str, fix: str) -> NoReturn:
        raise InputError(self.file, key, problem, fix)

    def warn(self, key: str, problem: str) -> None:
        log.warning("%s: %s: %s", self.file, key, problem)
        self.warnings.append(f"{self.file}: {key}: {problem}")

    def _image(self, raw: Any, key: str) -> Image:
        if isinstance(raw, str):
            return Image(self._name(raw, key))
        body = self.mapping(raw, key, "write image: NAME or image: {name: NAME, entrypoint: [...]}")
        self.check_keys(body, key, IMAGE_KEYS, IGNORED_IMAGE_KEYS)
        if "name" not in body:
            self.fail(f"{key}.name", "missing image name", "add name: with the image reference")

        entrypoint = None
        if "entrypoint" in body:
            entrypoint = self.strings(body["entrypoint"], f"{key}.entrypoint",
                                      'write it as a list, for example [""] or ["/bin/sh", "-c"]')
        return Image(
            name=self._name(body["name"], f"{key}.name"),
            entrypoint=entrypoint,
            pull_policy=self._pull_policy(body.get("pull_policy"), f"{key}.pull_policy"),
            docker=self._docker_options(body.get("docker"), f"{key}.docker"),
        )

    def _services(self, raw: Any, key: str) -> tuple[Service, ...]:
        services = []
        for index, item in enumerate(self.list(raw, key, "write services: as a list")):
            path = f"{key}[{index}]"
            if isinstance(item, str):
                services.append(Service(self._name(item, path)))
                continue

            body = self.mapping(item, path, "write the service as NAME or {name: NAME, alias: ...}")
            self.check_keys(body, path, SERVICE_KEYS, IGNORED_IMAGE_KEYS)
            image = self._image({field: body[field] for field in IMAGE_KEYS if field in body}, path)
            command = ()
            if "command" in body:
                command = self.strings(body["command"], f"{path}.command",
                                       'write it as a list, for example ["--mtu=1400"]')
            services.append(Service(
                image.name, image.entrypoint, image.pull_policy, image.docker,
                alias=self.string(body.get("alias", ""), f"{path}.alias"),
                command=command,
                variables=self._variables(body.get("variables"), f"{path}.variables"),
            ))
        return tuple(services)

    def _pull_policy(self, raw: Any, key: str) -> tuple[str, ...]:
        if raw is None:
            return ()
        policies = (raw,) if isinstance(raw, str) else self.strings(raw, key)
        for policy in policies:
            if policy not in ("always", "if-not-present", "never"):
                self.fail(key, f'unknown pull policy "{policy}"', "use always, if-not-present or never")
        return policies

    def _docker_options(self, raw: Any, key: str) -> tuple[tuple[str, str], ...]:
        if raw is None:
            return ()
        body = self.mapping(raw, key)
        self.check_keys(body, key, DOCKER_OPTION_KEYS)
        return tuple((field, self.string(body[field], f"{key}.{field}"))
                     for field in sorted(DOCKER_OPTION_KEYS) if field in body)

    def _variables(self, raw: Any, key: str) -> tuple[Variable, ...]:
        if raw is None:
            return ()
        variables = []
        for name, value in self.mapping(raw, key, "write variables as NAME: value pairs").items():
            path = join_key(key, str(name))
            raw_flag = False
            if isinstance(value, dict):
                self.check_keys(value, path, VARIABLE_KEYS)
                raw_flag = not self.boolean(value.get("expand", True), f"{path}.expand")
                value, path = value.get("value", ""), f"{path}.value"
            variables.append(Variable(str(name), self._value(value, path), public=True,
                                      raw=raw_flag))
        return tuple(variables)

    def _value(self, value: Any, key: str) -> str:
        if isinstance(value, bool) or value is None:
            self.fail(key, f"a variable value must be a string or a number, got {type_name(value)}",
                      f'quote the value, for example "{str(value).lower() if value is not None else ""}"')
        if isinstance(value, (int, float, str)):
            return str(value)
        self.fail(key, f"a variable value must be a string or a number, got {type_name(value)}",
                  "write a single string value")

    def _script(self, raw: Any, key: str, required: bool = True) -> tuple[str, ...]:
        """Parse a script; only ``script:`` itself is ``required`` to have a command."""
        if isinstance(raw, str):
            return (raw,)
        lines = tuple(self._flatten(self.list(raw, key, "write a string or a list of commands"),
                                    key, 0))
        if not lines and required:
            self.fail(key, "the script is empty", "add at least one command")
        return lines

    def _flatten(self, items: list[Any], key: str, depth: int) -> list[str]:
        lines: list[str] = []
        for index, item in enumerate(items):
            path = f"{key}[{index}]"
            if isinstance(item, list) and depth < 9:
                lines += self._flatten(item, path, depth + 1)
            elif isinstance(item, str):
                lines.append(item)
            elif isinstance(item, dict):
                self.fail(path, "expected a command string, got a mapping",
                          'quote the whole line; an unquoted ": " makes YAML read a mapping')
            else:
                self.fail(path, f"expected a command string, got {type_name(item)}",
                          "quote the line or nest lists at most 10 levels deep")
        return lines

    def _timeout(self, raw: Any, key: str) -> int:
        seconds = 0
        if isinstance(raw, int) and not isinstance(raw, bool):
            seconds = raw
        elif isinstance(raw, str) and re.fullmatch(r"(\s*\d+\s*[a-z]*\s*)+", raw.lower()):
            for amount, unit in re.findall(r"(\d+)\s*([a-z]*)", raw.lower()):
                if unit not in _UNITS:
                    self.fail(key, f'unknown time unit "{unit}"', "use s, m, h or d, e.g. 1h 30m")
                seconds += int(amount) * _UNITS[unit]
        if seconds <= 0:
            self.fail(key, f"invalid timeout {raw!r}", "write a duration such as 30m or 1h 30m")
        return seconds

    def _when(self, raw: Any, key: str) -> str:
        value = self.string(raw, key)
        if value == "delayed":
            self.fail(key, "when: delayed is not supported by the harness",
                      "use on_success and sleep in the script if the delay matters")
        if value not in WHEN_VALUES:
            self.fail(key, f'unknown value "{value}"', f"use one of {', '.join(WHEN_VALUES)}")
        return value

    def _allow_failure(self, raw: Any, key: str) -> tuple[bool | None, tuple[int, ...]]:
        if raw is None or isinstance(raw, bool):
            return raw, ()
        if isinstance(raw, dict) and set(raw) == {"exit_codes"}:
            codes = raw["exit_codes"]
            codes = [codes] if isinstance(codes, int) else codes
            if isinstance(codes, list) and codes and all(
                    isinstance(code, int) and not isinstance(code, bool) for code in codes):
                return False, tuple(codes)
        self.fail(key, f"expected true, false or exit_codes, got {type_name(raw)}",
                  "write allow_failure: true or allow_failure: {exit_codes: [137]}")


    def check_keys(self, body: dict[Any, Any], prefix: str, known: set[str] | tuple[str, ...],
                   ignored: set[str] = frozenset()) -> None:
        """Raise InputError on the first key of ``body`` that is neither known nor ignored.

        A key in ``ignored`` is a GitLab keyword the harness does not compile, so it only warns.
        """
        for field in body:
            key = join_key(prefix, str(field))
            if field in known:
                continue
            if field in ignored:
                self.warn(key, "is not compiled by the harness and has no effect")
                continue
            self.fail(key, "unknown key", unknown_key_fix(field, known, ignored))

    def _name(self, raw: Any, key: str) -> str:
        name = self.string(raw, key)
        if not name.strip():
            self.fail(key, "the image name is empty", "write an image reference such as docker:24.0")
        return name

    def string(self, raw: Any, key: str) -> str:
        if not isinstance(raw, str):
            self.fail(key, f"expected a string, got {type_name(raw)}", "write a quoted string")
        return raw

    def strings(self, raw: Any, key: str, fix: str = "write a list of strings") -> tuple[str, ...]:
        items = self.list(raw, key, fix)
        for index, item in enumerate(items):
            if not isinstance(item, str):
                self.fail(f"{key}[{index}]", f"expected a string, got {type_name(item)}", fix)
        return tuple(items)

    def list(self, raw: Any, key: str, fix: str = "write a list") -> list[Any]:
        if not isinstance(raw, list):
            self.fail(key, f"expected a list, got {type_name(raw)}", fix)
        return raw

    def mapping(self, raw: Any, key: str, fix: str = "write a mapping of keys") -> dict[Any, Any]:
        if not isinstance(raw, dict):
            self.fail(key, f"expected a mapping, got {type_name(raw)}", fix)
        return raw

    def boolean(self, raw: Any, key: str) -> bool:
        if not isinstance(raw, bool):
            self.fail(key, f"expected true or false, got {type_name(raw)}", "write true or false")
        return raw

