"""Scenario folders: a pipeline and a runner config per mode, project files, and what to watch.

A scenario is a folder under ``scenarios/`` with a ``scenario.toml``::

    name = "seed"
    purpose = "one line shown by `harness scenarios list`"

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

    [modes.dind]              # one table per mode the scenario runs in: dind, dood
    pipeline = "project/.gitlab-ci.yml"
    runner_config = "config.dind.toml"
    differs = "optional: how this mode's files differ from the other mode's"

    [watch]
    paths = ["/logs/app"]     # directories listed on every daemon and in the job containers

Every path in a scenario stays inside its folder: absolute paths, ``..`` and symbolic links that
lead outside are rejected.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import InputError

MODES = ("dind", "dood")
SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "scenarios"

_TOP_KEYS = {"name", "purpose", "project", "registry", "modes", "watch"}
_PROJECT_KEYS = {"path", "namespace", "name", "branch"}
_REGISTRY_KEYS = {"hostname", "user_variable", "password_variable", "address_variable"}
_MODE_KEYS = {"pipeline", "runner_config", "differs"}


@dataclass(frozen=True)
class ModeFiles:
    """The pipeline and runner config a scenario uses in one mode."""

    mode: str
    pipeline: Path
    runner_config: Path
    differs: str = ""


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


def load_scenario(folder: str | Path) -> Scenario:
    """Read and validate ``<folder>/scenario.toml``.

    ``folder`` may also be the name of a folder under the bundled ``scenarios/`` directory.

    Raises:
        InputError: the file is missing, malformed, has unknown keys or points outside its folder.
    """
    folder = _resolve_folder(folder)
    path = folder / "scenario.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "", "scenario.toml not found", "create it (see the format in harness/scenario.py)") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(path, "", f"invalid TOML: {error}", "fix the syntax at that line") from None

    _reject_unknown(path, "", data, _TOP_KEYS)
    project = _table(path, data, "project", _PROJECT_KEYS)
    modes = {mode: _mode_files(path, folder, mode, table) for mode, table in _table(path, data, "modes", set(MODES)).items()}
    if not modes:
        raise InputError(path, "modes", "no mode defined", "add a [modes.dind] or [modes.dood] table")

    return Scenario(
        name=_string(path, data, "name", default=folder.name),
        purpose=_string(path, data, "purpose", default=""),
        folder=folder,
        project_dir=_inside(path, folder, "project.path", _string(path, project, "path", "project", prefix="project.")),
        namespace=_string(path, project, "namespace", "group", prefix="project."),
        project_name=_string(path, project, "name", folder.name, prefix="project."),
        branch=_string(path, project, "branch", "main", prefix="project."),
        modes=modes,
        registry=_registry(path, data),
        watch_paths=tuple(_watch_paths(path, data)),
    )


def list_scenarios(root: Path = SCENARIOS_DIR) -> list[Scenario]:
    """Load every scenario folder under ``root`` (folders without scenario.toml are skipped)."""
    return [load_scenario(child) for child in sorted(root.iterdir()) if (child / "scenario.toml").is_file()]


def _resolve_folder(folder: str | Path) -> Path:
    candidate = Path(folder)
    if not candidate.exists() and (SCENARIOS_DIR / candidate).exists():
        candidate = SCENARIOS_DIR / candidate
    return candidate.resolve()


def _reject_unknown(path: Path, prefix: str, table: dict, known: set[str]) -> None:
    for key in table:
        if key not in known:
            raise InputError(path, f"{prefix}{key}", "unknown key",
                             f"use one of: {', '.join(sorted(known))}")


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


def _inside(path: Path, folder: Path, key: str, relative: str) -> Path:
    """Resolve ``relative`` against the scenario folder and reject anything that leaves it."""
    if Path(relative).is_absolute():
        raise InputError(path, key, f"absolute path {relative!r}", "give a path relative to the scenario folder")
    resolved = (folder / relative).resolve()
    if resolved != folder and folder not in resolved.parents:
        raise InputError(path, key, f"{relative!r} leads outside the scenario folder",
                         "keep every file of a scenario inside its folder (no '..' and no symbolic links out)")
    if not resolved.exists():
        raise InputError(path, key, f"{relative!r} does not exist", "create it or fix the path")
    return resolved


def _mode_files(path: Path, folder: Path, mode: str, table: object) -> ModeFiles:
    if not isinstance(table, dict):
        raise InputError(path, f"modes.{mode}", "expected a table", f"write it as [modes.{mode}]")
    _reject_unknown(path, f"modes.{mode}.", table, _MODE_KEYS)
    for key in ("pipeline", "runner_config"):
        if key not in table:
            raise InputError(path, f"modes.{mode}.{key}", "missing", f"name the {key.replace('_', ' ')} file")
    return ModeFiles(
        mode=mode,
        pipeline=_inside(path, folder, f"modes.{mode}.pipeline", _string(path, table, "pipeline", "")),
        runner_config=_inside(path, folder, f"modes.{mode}.runner_config", _string(path, table, "runner_config", "")),
        differs=_string(path, table, "differs", "", prefix=f"modes.{mode}."),
    )


def _registry(path: Path, data: dict) -> RegistrySpec | None:
    table = _table(path, data, "registry", _REGISTRY_KEYS)
    if not table:
        return None
    if "hostname" not in table:
        raise InputError(path, "registry.hostname", "missing", "name the registry host the pipeline pushes to")
    return RegistrySpec(**{key: _string(path, table, key, "", prefix="registry.") for key in table})


def _watch_paths(path: Path, data: dict) -> list[str]:
    paths = _table(path, data, "watch", {"paths"}).get("paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
        raise InputError(path, "watch.paths", "expected a list of absolute paths", 'write paths = ["/logs/app"]')
    return paths
