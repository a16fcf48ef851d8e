"""The one-DinD-job benchmark: plain docker floor, `harness run`, and gitlab-ci-local 4.60.0."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.rounds import Contender, RoundFailed, timed_command
from harness import labels

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

log = logging.getLogger(__name__)


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
        floor_labels = [f"{key}={value}" for key, value in labels.managed_labels("bench-floor").items()]
        return timed_command(["sh", str(BENCH_DIR / "floor.sh"), str(PROJECT_DIR), f"{os.getpid()}-{round_index}",
                              *floor_labels],
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


# gitlab-ci-local names its build containers, volumes and service networks with these prefixes.
# It leaves the service containers unnamed, so those are found by their images instead.
_PEER_PREFIXES = {"container": "gcl-", "volume": "gcl-", "network": "gitlab-ci-local-"}
_PEER_RUN_IMAGES = frozenset({"docker:dind", "docker:stable", PEER_HELPER_IMAGE, "sumina46/wait-for-it:latest"})


def _peer_resources() -> dict[str, set[str]]:
    """Return the containers, volumes and networks on the engine that gitlab-ci-local may have made.

    Containers are those without the harness's label that carry a gitlab-ci-local name or run one
    of the pipeline's images. Volumes and networks are found by name.
    """
    found = {"container": set(), "volume": set(), "network": set()}
    containers = subprocess.run(["docker", "ps", "-a", "--format",
                                 f'{{{{.ID}}}} {{{{.Names}}}} {{{{.Image}}}} {{{{.Label "{labels.MANAGED}"}}}}'],
                                capture_output=True, text=True, check=False).stdout
    for line in containers.splitlines():
        container_id, name, image, *managed = line.split()
        if not managed and (name.startswith(_PEER_PREFIXES["container"]) or image in _PEER_RUN_IMAGES):
            found["container"].add(container_id)
    for kind in ("volume", "network"):
        names = subprocess.run(["docker", kind, "ls", "--format", "{{.Name}}"],
                               capture_output=True, text=True, check=False).stdout
        found[kind] = {name for name in names.split() if name.startswith(_PEER_PREFIXES[kind])}
    return found


def _remove_peer_leftovers(before: dict[str, set[str]]) -> None:
    """Remove what a gitlab-ci-local round created and left behind, and keep what existed before.

    NOTE: an unlabelled container that another process starts from one of the pipeline's images
    during the round is removed too. Run the benchmark on an engine of its own.
    """
    after = _peer_resources()
    removals = {"container": ["docker", "rm", "-f", "-v"], "network": ["docker", "network", "rm"],
                "volume": ["docker", "volume", "rm", "-f"]}
    for kind in ("container", "network", "volume"):
        leftovers = sorted(after[kind] - before[kind])
        if leftovers:
            log.info("removing what the gitlab-ci-local round left: %s %s", kind, ", ".join(leftovers))
            subprocess.run([*removals[kind], *leftovers], capture_output=True, check=False)
