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
from harness.placement import PlacementObserver
from harness.runner_config import load_runner_config

log = logging.getLogger(__name__)


def run_payload(client, config_path: Path, payload: dict, sources: Path | None, trace: TextIO,
                runner: str | None = None, compat: RunnerCompat | None = None,
                watch_paths: tuple[str, ...] = (), concurrent_id: int = 0) -> dict:
    """Run ``payload`` with the runner config at ``config_path``; return ``JobResult.to_dict()``.

    The result also carries ``snapshots``: each dind service's daemon and the ``watch_paths`` in
    the service and build containers, read right before cleanup (see ``PlacementObserver``).

    Raises:
        InputError: the config file is invalid or has no runner called ``runner``.
    """
    config = load_runner_config(Path(config_path), runner)
    observer = PlacementObserver(tuple(watch_paths))
    executor = DockerExecutor(client, config, compat=compat, observer=observer)
    result = executor.run(payload, sources, trace, concurrent_id=concurrent_id).to_dict()
    result["snapshots"] = [snapshot.to_dict() for snapshot in observer.snapshots]
    return result


def add_job_options(parser: argparse.ArgumentParser, *, sources_required: bool) -> None:
    """Add the options that this command and the runner loop both pass on to ``run_payload``."""
    parser.add_argument("--config", required=True, type=Path, help="runner config.toml")
    parser.add_argument("--sources", required=sources_required, type=Path,
                        help="git work tree or bare repository of the project")
    parser.add_argument("--runner-version", help="GitLab Runner version to behave like (default: current)")
    parser.add_argument("--watch", action="append", default=[], metavar="PATH",
                        help="directory to list in service and build containers before cleanup (repeatable)")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line of ``python3 -m harness.executor``."""
    parser = argparse.ArgumentParser(prog="python3 -m harness.executor", description="Run one GitLab job payload with the docker executor.")
    add_job_options(parser, sources_required=False)
    parser.add_argument("--runner", help="name of the [[runners]] entry (default: the first)")
    parser.add_argument("--job", required=True, type=Path, help="job payload JSON, as GitLab sends it")
    parser.add_argument("--result", required=True, type=Path, help="file to write the result JSON to")
    parser.add_argument("--concurrent-id", type=int, default=0, metavar="N",
                        help="the runner's job slot, 0 to concurrent - 1 (default: 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one job from files; return 0 for success, 1 for a failed job, 2 for invalid input."""
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
                             arguments.runner, compat, tuple(arguments.watch), arguments.concurrent_id)
    except HarnessError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return error.exit_code
    arguments.result.write_text(json.dumps(result, indent=2))
    return 0 if result["status"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
