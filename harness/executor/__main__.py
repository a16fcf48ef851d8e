"""``python3 -m harness.executor``: run one job payload, stream its trace, write the result JSON.

Exit status: 0 when the job succeeded, 1 when it failed, 2 when an input file is invalid.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TextIO

import docker

from harness.errors import HarnessError, InputError
from harness.executor.compat import RunnerCompat
from harness.executor.executor import DockerExecutor

log = logging.getLogger(__name__)


def load_config(path: Path):
    """Return the runner config at ``path``: a ``RunnerConfig`` when that module exists, else a dict."""
    try:
        from harness.runner_config import load_runner_config
    except ImportError:
        # NOTE: fallback until harness.runner_config exists; both shapes carry config.toml keys.
        import tomllib

        try:
            return tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise InputError(str(path), "", f"cannot read the runner config: {error}", "fix the TOML file") from error
    return load_runner_config(path)


def run_payload(client, config_path: Path, payload: dict, sources: Path | None, trace: TextIO,
                runner: str | None = None, compat: RunnerCompat | None = None) -> dict:
    """Run ``payload`` with the runner config at ``config_path``; return ``JobResult.to_dict()``."""
    executor = DockerExecutor(client, load_config(Path(config_path)), compat=compat, runner=runner)
    return executor.run(payload, sources, trace).to_dict()


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m harness.executor", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="runner config.toml")
    parser.add_argument("--runner", help="name of the [[runners]] entry (default: the first)")
    parser.add_argument("--job", required=True, type=Path, help="job payload JSON, as GitLab sends it")
    parser.add_argument("--sources", type=Path, help="git work tree or bare repository of the project")
    parser.add_argument("--result", required=True, type=Path, help="file to write the result JSON to")
    parser.add_argument("--runner-version", help="GitLab Runner version to behave like (default: current)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        payload = json.loads(arguments.job.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(InputError(str(arguments.job), "", f"cannot read the job payload: {error}", "pass a JSON file"),
              file=sys.stderr)
        return 2

    compat = RunnerCompat.for_version(arguments.runner_version) if arguments.runner_version else None
    try:
        result = run_payload(docker.from_env(), arguments.config, payload, arguments.sources, sys.stdout,
                             arguments.runner, compat)
    except HarnessError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return error.exit_code
    arguments.result.write_text(json.dumps(result, indent=2))
    return 0 if result["status"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
