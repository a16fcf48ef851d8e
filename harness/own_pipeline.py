"""A user's own pipeline, runner config and project folder, run like a bundled scenario.

``--pipeline`` and ``--runner-config`` each take either one ``PATH``, used for every selected
mode, or ``MODE=PATH`` once per mode (``dind=ci/config.dind.toml``). One runner config cannot
serve both modes, because the mode decides how the harness wires it (a pull mirror in DinD, the
registry's trust on the host engine in DooD), so ``--mode both`` needs a ``MODE=PATH`` per mode.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from harness.errors import HarnessError, InputError
from harness.project import git
from harness.scenario import ModeFiles, Scenario

MODE_NAMES = ("dind", "dood")
# harness.project accepts these characters in a project name; anything else becomes '-'.
_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")


def parse_mode_paths(values: list[str], option: str) -> dict[str | None, Path]:
    """Turn ``PATH`` or ``MODE=PATH`` option values into ``{mode or None: path}``.

    Raises:
        InputError: a value names an unknown mode, repeats a mode, or mixes both forms.
    """
    paths: dict[str | None, Path] = {}
    for value in values:
        mode, separator, path = value.partition("=")
        if not separator or mode not in MODE_NAMES:
            mode, path = None, value
        if mode in paths:
            raise InputError("command line", option, f"given twice for {mode or 'every mode'}",
                             f"pass {option} once per mode, as dind=PATH and dood=PATH")
        paths[mode] = Path(path)
    if None in paths and len(paths) > 1:
        raise InputError("command line", option, "mixes PATH with MODE=PATH",
                         f"pass either one {option} PATH or {option} dind=PATH {option} dood=PATH")
    return paths


def selected_modes(mode: str | None, *per_mode: dict[str | None, Path]) -> list[str]:
    """Return the modes to run: ``--mode dind`` or ``dood``, else the modes named in ``MODE=PATH`` values.

    ``both`` (the command's default) means every mode that a ``MODE=PATH`` value names, or both
    modes when none does.

    Raises:
        InputError: ``mode`` is not dind, dood or both.
    """
    named = [name for name in MODE_NAMES if any(name in paths for paths in per_mode)]
    if mode in MODE_NAMES:
        return [mode]
    if mode not in (None, "both"):
        raise InputError("command line", "--mode", f"invalid mode {mode!r} for your own pipeline",
                         "pass --mode dind, dood or both")
    return named or list(MODE_NAMES)


def scenario_from_files(pipeline: dict[str | None, Path], runner_config: dict[str | None, Path], project: Path,
                        modes: list[str], branch: str | None = None,
                        watch_paths: tuple[str, ...] = ()) -> Scenario:
    """Build a scenario from a user's pipeline, runner configs and project folder.

    ``pipeline`` and ``runner_config`` map a mode, or None for every mode, to a file, as
    :func:`parse_mode_paths` returns them. Nothing is created on any daemon.

    Raises:
        InputError: a file or the folder is missing, or a mode has no file.
    """
    project = project.resolve()
    if not project.is_dir():
        raise InputError(str(project), "--project", "folder not found", "pass the folder that contains your project files")
    files = {}
    for mode in modes:
        files[mode] = _mode_files(mode, _pick(pipeline, mode, "--pipeline"),
                                  _pick(runner_config, mode, "--runner-config"))
    if len(modes) > 1 and None in runner_config:
        raise InputError("command line", "--runner-config", "one runner config cannot serve both modes",
                         "pass --runner-config dind=PATH --runner-config dood=PATH, or --mode dind or dood")
    return Scenario(name=_NAME_CHARACTERS.sub("-", project.name) or "project", purpose="your own pipeline",
                    folder=project, project_dir=project, namespace="group",
                    project_name=_NAME_CHARACTERS.sub("-", project.name).lstrip(".-") or "project",
                    branch=branch or _current_branch(project), modes=files, watch_paths=tuple(watch_paths))


def _pick(paths: dict[str | None, Path], mode: str, option: str) -> Path:
    path = paths.get(mode) or paths.get(None)
    if path is None:
        raise InputError("command line", option, f"no file for mode {mode}", f"add {option} {mode}=PATH")
    if not path.is_file():
        raise InputError(str(path), option, "file not found", "check the path")
    return path.resolve()


def _mode_files(mode: str, pipeline: Path, runner_config: Path) -> ModeFiles:
    return ModeFiles(mode=mode, pipeline=pipeline, runner_config=runner_config, kind=mode)


def _check_watch_path(path: str) -> None:
    # Teardown deletes a watched path that a job created, so it must name one plain directory.
    parts = path.split("/")
    if not path.startswith("/") or {".", ".."} & set(parts) or len(PurePosixPath(path).parts) < 2:
        raise InputError("command line", f"--watch {path}", "not an absolute path below /",
                         "write an absolute directory path without '.' or '..', such as /logs/app")


def _current_branch(project: Path) -> str:
    """Return the checked-out branch when ``project`` is a git repository, else ``main``."""
    if not (project / ".git").exists():
        return "main"
    try:
        return git(project, "rev-parse", "--abbrev-ref", "HEAD").strip() or "main"
    except HarnessError:
        return "main"


def scenario_from_arguments(args) -> tuple[Scenario, list[str]]:
    """Build the scenario and mode list from the ``harness run``/``report`` options.

    Raises:
        InputError: an option is missing or invalid, or a file does not exist.
    """
    missing = [option for option, value in (("--pipeline", args.pipeline), ("--runner-config", args.runner_config),
                                             ("--project", args.project)) if not value]
    if missing:
        raise InputError("command line", missing[0], "missing",
                         "pass --pipeline, --runner-config and --project together, or a scenario folder")
    pipeline = parse_mode_paths(args.pipeline, "--pipeline")
    runner_config = parse_mode_paths(args.runner_config, "--runner-config")
    modes = selected_modes(args.mode, pipeline, runner_config)
    for path in args.watch:
        _check_watch_path(path)
    scenario = scenario_from_files(pipeline, runner_config, Path(args.project), modes, branch=args.branch,
                                   watch_paths=tuple(args.watch))
    return scenario, modes


def scenario_from_options(pipeline: list[str], runner_config: list[str], project: str | None, root: Path,
                          mode: str) -> Scenario:
    """Build the scenario of the pytest plugin's ``--harness-*`` options for one mode.

    Relative paths are resolved against ``root`` (pytest's rootdir), so the options can live in
    a repository's ``pytest.ini``.

    Raises:
        InputError: an option is missing, a file does not exist, or ``mode`` is not dind or dood.
    """
    if not pipeline or not runner_config or not project:
        raise InputError("command line", "--harness-pipeline", "missing, or --harness-runner-config or "
                         "--harness-project is", "pass all three, for example in pytest.ini addopts")
    if mode not in MODE_NAMES:
        raise InputError("command line", "own_pipeline", f"invalid mode {mode!r}", "use dind or dood")
    pipelines = {key: root / path for key, path in parse_mode_paths(pipeline, "--harness-pipeline").items()}
    configs = {key: root / path for key, path in parse_mode_paths(runner_config, "--harness-runner-config").items()}
    return scenario_from_files(pipelines, configs, root / project, [mode])
