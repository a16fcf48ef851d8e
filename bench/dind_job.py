"""The one-DinD-job benchmark: plain docker floor, `harness run`, and gitlab-ci-local 4.60.0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.rounds import Contender, RoundFailed, timed_command

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PIPELINE_DIR = BENCH_DIR / "pipelines" / "dind-build"
PROJECT_DIR = PIPELINE_DIR / "project"
GITLAB_CI_LOCAL = BENCH_DIR / ".tools" / "node_modules" / ".bin" / "gitlab-ci-local"
GITLAB_CI_LOCAL_VERSION = "4.60.0"
# Stand-ins from docker/images.toml, so gitlab-ci-local finds every image locally and pulls nothing.
PEER_HELPER_IMAGE = "firecow/gitlab-ci-local-util:latest"
# The remote is only parsed for CI_PROJECT_* variables; the .invalid name can never be contacted.
PEER_REMOTE = "https://gitlab.harness.invalid/bench/dind-build.git"


def local_engine_env() -> dict[str, str]:
    """Return this process's environment with DOCKER_HOST pinned to the local engine's socket."""
    env = dict(os.environ)
    env["DOCKER_HOST"] = "unix:///var/run/docker.sock"
    env.pop("DOCKER_CONTEXT", None)
    env["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    return env


def contenders(work_dir: Path) -> dict[str, Contender]:
    """Return the floor, ours and peer contenders of the DinD build job, logging under ``work_dir``."""
    env = local_engine_env()

    def floor(round_index: int) -> float:
        return timed_command(["sh", str(BENCH_DIR / "floor.sh"), str(PROJECT_DIR), f"{os.getpid()}-{round_index}"],
                             work_dir / f"dind-job-floor-{round_index}.log", env=env)

    def ours(round_index: int) -> float:
        return timed_command(ours_command("local"), work_dir / f"dind-job-ours-{round_index}.log",
                             cwd=REPO_DIR, env=env)

    def ours_sandbox(round_index: int) -> float:
        return timed_command(ours_command("sandbox"), work_dir / f"dind-job-ours-sandbox-{round_index}.log",
                             cwd=REPO_DIR, env=env)

    def peer(round_index: int) -> float:
        checkout = _peer_checkout(work_dir / f"gcl-{round_index}")
        before = _peer_resources()
        try:
            return timed_command(peer_command(), work_dir / f"dind-job-gitlab-ci-local-{round_index}.log",
                                 cwd=checkout, env=env)
        finally:
            shutil.rmtree(checkout, ignore_errors=True)
            _remove_peer_leftovers(before)

    return {"floor": floor, "ours": ours, "gitlab-ci-local": peer, "ours sandbox": ours_sandbox}


def ours_command(host_engine: str) -> list[str]:
    """Return the `harness run` command line of the DinD job on ``host_engine`` (local or sandbox).

    ``local`` runs on the engine the floor and gitlab-ci-local use, so only that contender is
    compared with them. ``sandbox``, the CLI's default, adds a dind host engine and its seeding.
    """
    return [sys.executable, "-m", "harness.cli", "run", str(PIPELINE_DIR), "--mode", "dind",
            f"--host-engine={host_engine}"]


def peer_command() -> list[str]:
    """Return the gitlab-ci-local command line: privileged services, local images only."""
    return [str(GITLAB_CI_LOCAL), "--privileged", "--helper-image", PEER_HELPER_IMAGE,
            "--pull-policy", "if-not-present", "--no-color"]


def _peer_checkout(directory: Path) -> Path:
    """Copy the project into a fresh git repository, as gitlab-ci-local reads git metadata.

    Runs outside the timed region: a gitlab-ci-local user already has the checkout.
    """
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(PROJECT_DIR, directory)
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@harness.invalid"]
    for command in (["init", "-q", "-b", "main"], [*identity, "add", "-A"],
                    [*identity, "commit", "-q", "-m", "bench"], ["remote", "add", "origin", PEER_REMOTE]):
        completed = subprocess.run(["git", *command], cwd=directory, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RoundFailed(f"git {command[-1]} in {directory} failed: {completed.stderr.strip()}")
    return directory


# gitlab-ci-local names its containers and volumes gcl-<job>-<id>... and its service networks
# gitlab-ci-local-<id>. It removes them itself, except when a round dies half-way.
_PEER_PREFIXES = {"container": "gcl-", "volume": "gcl-", "network": "gitlab-ci-local-"}


def _peer_resources() -> dict[str, set[str]]:
    """Return the names of gitlab-ci-local's containers, volumes and networks on the engine."""
    commands = {"container": ["docker", "ps", "-a", "--format", "{{.Names}}"],
                "volume": ["docker", "volume", "ls", "--format", "{{.Name}}"],
                "network": ["docker", "network", "ls", "--format", "{{.Name}}"]}
    found = {}
    for kind, command in commands.items():
        output = subprocess.run(command, capture_output=True, text=True, check=False).stdout
        found[kind] = {name for name in output.split() if name.startswith(_PEER_PREFIXES[kind])}
    return found


def _remove_peer_leftovers(before: dict[str, set[str]]) -> None:
    """Remove what a gitlab-ci-local round created and left behind; what existed before stays."""
    after = _peer_resources()
    removals = {"container": ["docker", "rm", "-f", "-v"], "network": ["docker", "network", "rm"],
                "volume": ["docker", "volume", "rm", "-f"]}
    for kind in ("container", "network", "volume"):
        leftovers = sorted(after[kind] - before[kind])
        if leftovers:
            subprocess.run([*removals[kind], *leftovers], capture_output=True, check=False)
