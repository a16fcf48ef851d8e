"""A real GitLab Runner image (``--runner-image gitlab/gitlab-runner:<tag>``) as the run's runner.

The image is started on the host engine with ``gitlab-runner run-single`` against the run's
coordinator: ``--url`` and ``--token`` name the coordinator, ``-c``/``-r`` the scenario's wired
config.toml and its runner, and ``--max-builds`` the number of jobs that can run, so the runner
exits after the pipeline. Its environment carries no ``DOCKER_*`` variable, because run-single
reads each of them as a setting (``DOCKER_HOST``, ``DOCKER_IMAGE`` and more).

NOTE: no gitlab-runner image can be pulled on the machines this harness is developed on, so this
path is covered by tests of the arguments and of the missing-image error only. The README describes
how to check it with a real image.
"""

from __future__ import annotations

import dataclasses

import docker

from harness.errors import InputError
from harness.runner import SOCKET, ContainerRunner, image_exists, render_toml
from harness.runner_config import RunnerConfig

CONFIG_DIR = "/etc/gitlab-runner"
# Seconds run-single waits without a job before it exits, in case the harness never removes it.
WAIT_TIMEOUT = 600


def require_image(client: docker.DockerClient, image: str) -> None:
    """Check that ``image`` exists on the engine behind ``client``; only lists images.

    Raises:
        InputError: the reference is invalid, or the image is missing. Nothing can be pulled
            here, so the fix is to load it.
    """
    try:
        exists = image_exists(client, image)
    except docker.errors.APIError as error:
        if error.status_code != 400:
            raise
        raise InputError("command line", "--runner-image", f'invalid image reference "{image}"',
                         "write NAME[:TAG] in lower case, such as gitlab/gitlab-runner:v18.6.0") from None
    if not exists:
        raise InputError("command line", "--runner-image", f'image "{image}" does not exist on the engine '
                         "and cannot be pulled here",
                         f"load it first (`docker save {image}` where it can be pulled, "
                         "then `docker load -i FILE` here)")


def run_single_arguments(url: str, token: str, runner_name: str, max_builds: int,
                         wait_timeout: int = WAIT_TIMEOUT) -> list[str]:
    """Return the container command: ``run-single`` against ``url`` with the mounted config.toml."""
    return ["run-single", "--url", url, "--token", token, "--executor", "docker",
            "-c", f"{CONFIG_DIR}/config.toml", "-r", runner_name,
            "--max-builds", str(max_builds), "--wait-timeout", str(wait_timeout),
            "--docker-pull-policy", "if-not-present"]


def runner_config_toml(config: RunnerConfig, url: str, token: str) -> str:
    """Return ``config`` as TOML with the selected runner's url and token set to the coordinator's.

    ``-c``/``-r`` load the runner from this file, so it must name the same server as ``--url``.
    The pull policy is ``if-not-present`` unless the config sets one, because nothing can be pulled.
    """
    runner = config.runners[config.selected]
    docker_config = runner.docker
    if not docker_config.pull_policy:
        docker_config = dataclasses.replace(docker_config, pull_policy=("if-not-present",))
    runners = list(config.runners)
    runners[config.selected] = dataclasses.replace(runner, url=url, token=token, docker=docker_config)
    return render_toml(dataclasses.replace(config, runners=tuple(runners)).to_dict())


class ImageRunner(ContainerRunner):
    """A ``gitlab/gitlab-runner`` container that runs the pipeline's jobs with ``run-single``."""

    def __init__(self, client: docker.DockerClient, config: RunnerConfig, image: str, coordinator_url: str,
                 runner_token: str, max_builds: int) -> None:
        super().__init__(client, runner_config_toml(config, coordinator_url, runner_token), image)
        self.runner_name = config.runners[config.selected].name
        self.command = run_single_arguments(coordinator_url, runner_token, self.runner_name, max_builds)

    def container_spec(self) -> tuple[list[str], dict, dict[str, str]]:
        """Return the command, volumes and environment the container is created with.

        The environment is built here and not inherited, so no ``DOCKER_*`` variable of this
        process reaches run-single.
        """
        volumes = {SOCKET: {"bind": SOCKET, "mode": "rw"},
                   str(self.work_dir): {"bind": CONFIG_DIR, "mode": "rw"}}
        return self.command, volumes, {}

    def start(self) -> "ImageRunner":
        """Create and start the runner container with the host socket and the config directory mounted."""
        self._run(*self.container_spec())
        return self
