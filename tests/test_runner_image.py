"""``--runner-image``: a real GitLab Runner image started with ``run-single`` against the coordinator.

No gitlab-runner image can be pulled where these tests run, so they pin the container's command,
config and environment, and the error for a missing image. Running a real image is a manual check
(see the README).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from harness import runner_image
from harness.errors import InputError
from harness.run import RunOptions, check_inputs
from harness.runner_config import load_runner_config
from harness.scenario import load_scenario

from test_bad_input import EngineState, assert_single_error, run_harness

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = REPO_ROOT / "scenarios" / "seed"
MISSING_IMAGE = "gitlab/gitlab-runner:v0.0.0-not-loaded"
URL = "http://10.212.7.1:40111"
TOKEN = "glrt-coordinatortoken"


def test_run_single_arguments() -> None:
    command = runner_image.run_single_arguments(URL, TOKEN, "seed-dind", max_builds=2, wait_timeout=30)

    assert command == ["run-single", "--url", URL, "--token", TOKEN, "--executor", "docker",
                       "-c", "/etc/gitlab-runner/config.toml", "-r", "seed-dind",
                       "--max-builds", "2", "--wait-timeout", "30", "--docker-pull-policy", "if-not-present"]


def test_config_names_coordinator() -> None:
    config = load_runner_config(SEED / "config.dind.toml")

    written = tomllib.loads(runner_image.runner_config_toml(config, URL, TOKEN))

    runner = written["runners"][0]
    assert runner["name"] == config.runner.name
    assert runner["url"] == URL
    assert runner["token"] == TOKEN
    # The scenario's own settings stay, such as the dind service's privileged mode.
    assert runner["docker"]["privileged"] == config.docker.privileged


def test_config_pull_policy_defaults_offline(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text((SEED / "config.dind.toml").read_text().replace('pull_policy = "if-not-present"', ""))
    config = load_runner_config(path)
    assert not config.docker.pull_policy

    written = tomllib.loads(runner_image.runner_config_toml(config, URL, TOKEN))

    assert written["runners"][0]["docker"]["pull_policy"] == ["if-not-present"]


def test_container_environment_has_no_docker_variables(monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    monkeypatch.setenv("DOCKER_IMAGE", "alpine")
    config = load_runner_config(SEED / "config.dood.toml")
    runner = runner_image.ImageRunner(None, config, "gitlab/gitlab-runner:v18.6.0", URL, TOKEN, max_builds=2)
    try:
        command, volumes, environment = runner.container_spec()
        written = tomllib.loads((runner.work_dir / "config.toml").read_text())
    finally:
        runner.close()

    assert not [key for key in environment if key.startswith("DOCKER_")]
    assert command[:1] == ["run-single"]
    assert "--max-builds" in command
    assert volumes["/var/run/docker.sock"]["bind"] == "/var/run/docker.sock"
    assert written["runners"][0]["url"] == URL


@pytest.mark.engine
def test_missing_image_rejected_before_run(engine_client) -> None:
    scenario = load_scenario(SEED)

    with pytest.raises(InputError) as raised:
        check_inputs(engine_client, scenario, "dind", RunOptions(runner_image=MISSING_IMAGE))

    message = str(raised.value)
    assert message.startswith("command line: --runner-image: ")
    assert MISSING_IMAGE in message
    assert "docker load" in message


@pytest.mark.engine
def test_invalid_image_reference_rejected(engine_client) -> None:
    scenario = load_scenario(SEED)

    with pytest.raises(InputError) as raised:
        check_inputs(engine_client, scenario, "dind", RunOptions(runner_image="GitLab/Runner:Latest"))

    assert str(raised.value).startswith('command line: --runner-image: invalid image reference "GitLab/Runner:Latest"')


@pytest.mark.engine
@pytest.mark.images
def test_missing_image_cli_creates_nothing(engine_client) -> None:
    before = EngineState.capture(engine_client)

    outcome = run_harness("run", "seed", "--mode", "dind", "--runner-image", MISSING_IMAGE)

    after = EngineState.capture(engine_client)
    assert_single_error(outcome, 2, "command line: --runner-image: ", MISSING_IMAGE,
                        "cannot be pulled here", "docker load -i FILE")
    assert before.leftovers(after, outcome.session) == []
