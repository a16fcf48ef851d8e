"""Scenario folders: a pipeline and a runner config per mode, project files, and what to watch.

A scenario is a folder under ``scenarios/`` with a ``scenario.toml``::

    name = "seed"
    purpose = "one line shown by `harness scenarios list`"
    reports = ["D16"]         # optional: the field reports this scenario reproduces

    [project]                 # the files committed to the project's git repository
    path = "project"
    namespace = "devopsman"
    name = "nodedemo"
    branch = "master"

    [registry]                # optional: a local registry under this name, with masked credentials
    hostname = "registry.example.com"
    user_variable = "REGISTRY_USER"
    password_variable = "REGISTRY_PASSWORD"
    address_variable = "REGISTRY_ADDRESS"

    [modes.dind]              # one table per mode; the name is free-form
    kind = "dind"             # dind or dood; defaults to the name when it is one of them
    pipeline = "project/.gitlab-ci.yml"
    runner_config = "config.dind.toml"
    differs = "optional: how this mode's files differ from the other mode's"
    variables = { EXTRA = "value" }   # optional: project variables added in this mode only

    [watch]
    paths = ["/logs/app"]     # directories listed on every daemon and in the job containers

    [[expect]]                # checks of the outcome, see harness/expectations.py and docs/scenarios.md
    job = "Test"
    status = "failed"
    because = "why real GitLab Runner and Docker behave this way"

Every path in a scenario stays inside its folder: absolute paths, ``..`` and symbolic links that
lead outside are rejected.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from harness.errors import HarnessError, InputError, unknown_key_fix
from harness.expectations import Expectation, parse_expectations
from harness.project import git

KINDS = ("dind", "dood")
SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "scenarios"

# The same rules harness.project applies, checked here so the error names the scenario.toml key.
_PROJECT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_BRANCH_CHARACTERS = set(" ~^:?*[\\")
# The registry hostname becomes a directory under /etc/docker/certs.d and an /etc/hosts entry,
# so only a plain DNS name is accepted.
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")

_TOP_KEYS = {"name", "purpose", "reports", "project", "registry", "modes", "watch", "expect"}
_PROJECT_KEYS = {"path", "namespace", "name", "branch"}
_REGISTRY_KEYS = {"hostname", "user_variable", "password_variable", "address_variable"}
_MODE_KEYS = {"kind", "pipeline", "runner_config", "differs", "variables"}
# A mode name becomes part of test ids and of --mode, so it stays one plain word.
_MODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ModeFiles:
    """The pipeline, runner config and extra variables a scenario uses in one mode.

    ``kind`` decides the wiring: ``dind`` gets the pull mirror, ``dood`` gets the registry's
    trust installed on the host engine.
    """

    mode: str
    pipeline: Path
    runner_config: Path
    kind: str = ""
    differs: str = ""
    variables: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Callers that build modes in code may leave kind out when the mode is named after it.
        if not self.kind and self.mode in KINDS:
            object.__setattr__(self, "kind", self.mode)


@dataclass(frozen=True)
class RegistrySpec:
    """The registry a scenario pushes to, and the variable names that carry its credentials."""

    hostname: str
    user_variable: str = "REGISTRY_USER"
    password_variable: str = "REGISTRY_PASSWORD"
    address_variable: str = "REGISTRY_ADDRESS"


@dataclass(frozen=True)
class Scenario:
    """A loaded, validated scenario folder."""

    name: str
    purpose: str
    folder: Path
    project_dir: Path
    namespace: str
    project_name: str
    branch: str
    modes: dict[str, ModeFiles]
    registry: RegistrySpec | None = None
    watch_paths: tuple[str, ...] = field(default_factory=tuple)
    reports: tuple[str, ...] = ()
    expectations: tuple[Expectation, ...] = ()

    @property
    def file(self) -> Path:
        """The ``scenario.toml`` this scenario was read from."""
        return self.folder / "scenario.toml"

    def mode_files(self, mode: str) -> ModeFiles:
        """Return the files of ``mode``, or raise InputError when the scenario does not define it."""
        if mode not in self.modes:
            raise InputError(self.file, f"modes.{mode}", "mode not defined",
                             f"add a [modes.{mode}] table or run with --mode {' or '.join(self.modes)}")
        return self.modes[mode]

    def check_branch(self, branch: str | None) -> None:
        """Raise InputError unless a pipeline for ``branch`` can be created from the project folder.

        A plain project folder is committed on ``project.branch`` only, so another branch needs a
        project folder that is itself a git repository with that branch.
        """
        if not branch or branch == self.branch:
            return
        if (self.project_dir / ".git").exists():
            try:
                git(self.project_dir, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
                return
            except HarnessError:
                pass
        raise InputError("command line", "--branch", f'project {self.project_dir} has no branch "{branch}"',
                         f"omit --branch to use {self.branch!r}, or make the project folder a git "
                         "repository with that branch")


def load_scenario(folder: str | Path) -> Scenario:
    """Read and validate ``<folder>/scenario.toml``.

    ``folder`` may also be the name of a folder under the bundled ``scenarios/`` directory.

    Raises:
        InputError: the folder or file is missing, malformed, has unknown keys or invalid values,
            or points outside its folder.
    """
    folder = _resolve_folder(folder)
    path = folder / "scenario.toml"
    data = _read_toml(path)

    _reject_unknown(path, "", data, _TOP_KEYS)
    project = _table(path, data, "project", _PROJECT_KEYS)
    modes = _modes(path, folder, data)

    project_dir = _inside(path, folder, "project.path", _string(path, project, "path", "project", prefix="project."))
    _reject_links_out(path, folder, project_dir)

    return Scenario(
        name=_string(path, data, "name", default=folder.name),
        purpose=_string(path, data, "purpose", default=""),
        folder=folder,
        project_dir=project_dir,
        namespace=_project_name(path, project, "namespace", "group"),
        project_name=_project_name(path, project, "name", folder.name),
        branch=_branch(path, project),
        modes=modes,
        registry=_registry(path, data),
        watch_paths=tuple(_watch_paths(path, data)),
        reports=_reports(path, data),
        expectations=parse_expectations(path, data.get("expect", []), list(modes)),
    )


def list_scenarios(root: Path = SCENARIOS_DIR) -> list[Scenario]:
    """Load every scenario folder under ``root`` (folders without scenario.toml are skipped)."""
    return [load_scenario(child) for child in sorted(root.iterdir()) if (child / "scenario.toml").is_file()]


def _resolve_folder(folder: str | Path) -> Path:
    candidate = Path(folder)
    # Only a plain folder name is looked up among the bundled scenarios, so "../x" cannot leave them.
    bundled_name = len(candidate.parts) == 1 and candidate.name not in ("", ".", "..")
    if not candidate.exists() and bundled_name and (SCENARIOS_DIR / candidate).exists():
        candidate = SCENARIOS_DIR / candidate
    if not candidate.is_dir():
        bundled = sorted(child.name for child in SCENARIOS_DIR.iterdir() if (child / "scenario.toml").is_file())
        raise InputError(str(folder), "", "no such scenario folder",
                         f"pass a folder that contains scenario.toml or a bundled scenario: {', '.join(bundled)}")
    return candidate.resolve()


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pods = sorted(path.parent.glob("*.yaml"))
        if pods and not (path.parent / "project").exists():
            raise InputError(path, "", "scenario.toml not found; this folder holds Kubernetes pod manifests",
                             f"run one with `harness pod run {pods[0]}`") from None
        raise InputError(path, "", "scenario.toml not found",
                         "create it (the format is described in docs/scenarios.md)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, "", f"cannot read the file: {error}",
                         "check the file permissions and that it is UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        position = _TOML_POSITION.search(str(error))
        where = f"line {position.group(1)}" if position else ""
        problem = _TOML_POSITION.sub("", str(error)).strip()
        column = f" at column {position.group(2)}" if position else ""
        raise InputError(path, where, f"invalid TOML: {problem}{column}", "fix the syntax on that line") from None


def _reject_unknown(path: Path, prefix: str, table: dict, known: set[str]) -> None:
    for key in table:
        if key not in known:
            raise InputError(path, f"{prefix}{key}", "unknown key", unknown_key_fix(key, known))


def _table(path: Path, data: dict, key: str, known: set[str]) -> dict:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise InputError(path, key, f"expected a table, got {type(table).__name__}", f"write it as [{key}]")
    _reject_unknown(path, f"{key}.", table, known)
    return table


def _string(path: Path, table: dict, key: str, default: str, prefix: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise InputError(path, f"{prefix}{key}", f"expected a string, got {type(value).__name__}",
                         "quote the value")
    return value


def _project_name(path: Path, project: dict, key: str, default: str) -> str:
    """Return ``project.namespace`` or ``project.name``. A namespace may contain ``/``."""
    value = _string(path, project, key, default, prefix="project.")
    parts = value.split("/") if key == "namespace" else [value]
    if not all(_PROJECT_NAME.fullmatch(part) for part in parts):
        raise InputError(path, f"project.{key}", f"invalid project {key} {value!r}",
                         "use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return value


def _branch(path: Path, project: dict) -> str:
    branch = _string(path, project, "branch", "main", prefix="project.")
    if not branch or branch.startswith("-") or _BRANCH_CHARACTERS & set(branch):
        raise InputError(path, "project.branch", f"invalid branch name {branch!r}",
                         "use a plain git branch name such as master or main")
    return branch


def _inside(path: Path, folder: Path, key: str, relative: str) -> Path:
    """Resolve ``relative`` against the scenario folder and reject anything that leaves it."""
    if "\0" in relative:
        raise InputError(path, key, f"{relative!r} contains a NUL character", "remove it from the path")
    if Path(relative).is_absolute():
        raise InputError(path, key, f"absolute path {relative!r}", "give a path relative to the scenario folder")
    resolved = (folder / relative).resolve()
    if resolved != folder and folder not in resolved.parents:
        raise InputError(path, key, f"{relative!r} leads outside the scenario folder",
                         "keep every file of a scenario inside its folder (no '..' and no symbolic links out)")
    if not resolved.exists():
        raise InputError(path, key, f"{relative!r} does not exist", "create it or fix the path")
    return resolved


def _reject_links_out(path: Path, folder: Path, project_dir: Path) -> None:
    """Reject a symbolic link in the project folder whose target lies outside the scenario folder.

    Such a link makes the scenario depend on a file outside its folder, which a copy of the
    folder on another machine does not have.
    """
    for directory, subdirectories, files in os.walk(project_dir):
        subdirectories[:] = [name for name in subdirectories if name != ".git"]
        for name in [*subdirectories, *files]:
            entry = Path(directory) / name
            if not entry.is_symlink():
                continue
            target = entry.resolve()
            if target != folder and folder not in target.parents:
                raise InputError(path, "project.path",
                                 f"{entry.relative_to(folder)} is a symbolic link to {target}, outside the scenario folder",
                                 "replace the link by a copy of its target inside the scenario folder")


def _modes(path: Path, folder: Path, data: dict) -> dict[str, ModeFiles]:
    table = data.get("modes", {})
    if not isinstance(table, dict):
        raise InputError(path, "modes", f"expected a table, got {type(table).__name__}", "write it as [modes.dind]")
    if not table:
        raise InputError(path, "modes", "no mode defined", "add a [modes.dind] or [modes.dood] table")
    for mode in table:
        if not _MODE_NAME.fullmatch(mode):
            raise InputError(path, f"modes.{mode}", "invalid mode name",
                             "use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return {mode: _mode_files(path, folder, mode, files) for mode, files in table.items()}


def _mode_files(path: Path, folder: Path, mode: str, table: object) -> ModeFiles:
    if not isinstance(table, dict):
        raise InputError(path, f"modes.{mode}", "expected a table", f"write it as [modes.{mode}]")
    _reject_unknown(path, f"modes.{mode}.", table, _MODE_KEYS)
    kind = _string(path, table, "kind", mode if mode in KINDS else "", prefix=f"modes.{mode}.")
    if kind not in KINDS:
        problem = "missing" if not kind else f"invalid kind {kind!r}"
        raise InputError(path, f"modes.{mode}.kind", problem, 'write kind = "dind" or kind = "dood"')
    for key in ("pipeline", "runner_config"):
        if key not in table:
            raise InputError(path, f"modes.{mode}.{key}", "missing", f"name the {key.replace('_', ' ')} file")
    files = {key: _inside(path, folder, f"modes.{mode}.{key}", _string(path, table, key, "", prefix=f"modes.{mode}."))
             for key in ("pipeline", "runner_config")}
    for key, file in files.items():
        if not file.is_file():
            raise InputError(path, f"modes.{mode}.{key}", f"{file} is not a file", "name a file, not a folder")
    return ModeFiles(mode=mode, **files, kind=kind,
                     differs=_string(path, table, "differs", "", prefix=f"modes.{mode}."),
                     variables=_mode_variables(path, mode, table.get("variables", {})))


def _mode_variables(path: Path, mode: str, variables: object) -> tuple[tuple[str, str], ...]:
    key = f"modes.{mode}.variables"
    if not isinstance(variables, dict):
        raise InputError(path, key, f"expected a table, got {type(variables).__name__}",
                         'write variables = { NAME = "value" }')
    for name, value in variables.items():
        if not _VARIABLE_NAME.fullmatch(name):
            raise InputError(path, f"{key}.{name}", "is not a variable name",
                             "use letters, digits and '_', not starting with a digit")
        if not isinstance(value, str):
            raise InputError(path, f"{key}.{name}", f"expected a string, got {type(value).__name__}",
                             "quote the value")
    return tuple(variables.items())


def _reports(path: Path, data: dict) -> tuple[str, ...]:
    reports = data.get("reports", [])
    if not isinstance(reports, list) or not all(isinstance(item, str) and item for item in reports):
        raise InputError(path, "reports", "expected a list of report ids", 'write reports = ["D16"]')
    return tuple(reports)


def _registry(path: Path, data: dict) -> RegistrySpec | None:
    table = _table(path, data, "registry", _REGISTRY_KEYS)
    if not table:
        return None
    if "hostname" not in table:
        raise InputError(path, "registry.hostname", "missing", "name the registry host the pipeline pushes to")
    values = {key: _string(path, table, key, "", prefix="registry.") for key in table}

    hostname = values["hostname"]
    if len(hostname) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in hostname.split(".")):
        raise InputError(path, "registry.hostname", f"{hostname!r} is not a DNS name",
                         "write a host name without scheme, port or path, such as registry.example.com")
    for key in _REGISTRY_KEYS - {"hostname"}:
        if key in values and not _VARIABLE_NAME.fullmatch(values[key]):
            raise InputError(path, f"registry.{key}", f"{values[key]!r} is not a variable name",
                             "use letters, digits and '_', not starting with a digit")
    return RegistrySpec(**values)


def _watch_paths(path: Path, data: dict) -> list[str]:
    paths = _table(path, data, "watch", {"paths"}).get("paths", [])
    if not isinstance(paths, list):
        raise InputError(path, "watch.paths", f"expected a list, got {type(paths).__name__}",
                         'write paths = ["/logs/app"]')
    for index, item in enumerate(paths):
        # Teardown deletes a watched path that a job created, so it must name one plain directory.
        plain = isinstance(item, str) and item.startswith("/") and not {".", ".."} & set(item.split("/"))
        if not plain or len(PurePosixPath(item).parts) < 2:
            raise InputError(path, f"watch.paths[{index}]", f"{item!r} is not an absolute path below /",
                             'write an absolute directory path without "." or "..", such as "/logs/app"')
    return paths
