"""Runner config.toml reader: fields, defaults, warnings and one-line errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.runner_config import (
    DockerConfig, RunnerConfig, RunnerSettings, ServiceConfig, load_runner_config,
)

MINIMAL = """
[[runners]]
  name = "only"
  executor = "docker"
  [runners.docker]
    image = "docker:24.0.5-cli"
"""

FULL = """
concurrent = 4
check_interval = 3

[[runners]]
  name = "dind"
  url = "http://gitlab.harness.invalid"
  token = "glrt-t1_abcdefghijk"
  executor = "docker"
  limit = 2
  builds_dir = "/builds"
  cache_dir = "/cache"
  environment = ["DOCKER_DRIVER=overlay2", "EMPTY="]
  [runners.docker]
    image = "docker:24.0.5-cli"
    privileged = true
    services_privileged = false
    allowed_privileged_images = ["docker:*"]
    allowed_privileged_services = ["docker:*-dind"]
    volumes = ["/certs/client", "/cache"]
    extra_hosts = ["registry.local:127.0.0.1"]
    network_mode = "host"
    disable_cache = true
    cache_dir = "/srv/cache"
    pull_policy = ["if-not-present", "never"]
    wait_for_services_timeout = 45
    network_mtu = 1400
    helper_image = "helper:latest"
    hostname = "build-host"
    volume_keep = true
    [[runners.docker.services]]
      name = "docker:24.0.5-dind"
      alias = "dind docker"
      command = ["--mtu=1400"]
      entrypoint = ["dockerd-entrypoint.sh"]
      environment = ["DOCKER_TLS_CERTDIR=/certs"]
  [runners.feature_flags]
    FF_NETWORK_PER_BUILD = true
    FF_USE_FASTZIP = false

[[runners]]
  name = "dood"
  executor = "docker"
  [runners.docker]
    volumes = ["/var/run/docker.sock:/var/run/docker.sock"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, runner_name: str | None = None) -> RunnerConfig:
    return load_runner_config(write(tmp_path, text), runner_name)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(InputError) as raised:
        load(tmp_path, text)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_full_config_fields(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)

    assert config.concurrent == 4
    assert config.check_interval == 3
    assert config.runner == RunnerSettings(
        name="dind", url="http://gitlab.harness.invalid", token="glrt-t1_abcdefghijk",
        executor="docker", limit=2, builds_dir="/builds", cache_dir="/cache",
        environment=("DOCKER_DRIVER=overlay2", "EMPTY="),
        docker=DockerConfig(
            image="docker:24.0.5-cli", privileged=True, services_privileged=False,
            allowed_privileged_images=("docker:*",), allowed_privileged_services=("docker:*-dind",),
            volumes=("/certs/client", "/cache"), extra_hosts=("registry.local:127.0.0.1",),
            network_mode="host", disable_cache=True, cache_dir="/srv/cache",
            pull_policy=("if-not-present", "never"), wait_for_services_timeout=45,
            network_mtu=1400, helper_image="helper:latest", hostname="build-host",
            volume_keep=True,
            services=(ServiceConfig("docker:24.0.5-dind", "dind docker", ("--mtu=1400",),
                                    ("dockerd-entrypoint.sh",), ("DOCKER_TLS_CERTDIR=/certs",)),),
        ),
        feature_flags={"FF_NETWORK_PER_BUILD": True, "FF_USE_FASTZIP": False},
    )
    assert config.warnings == ()


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)

    assert config.concurrent == 1
    assert config.check_interval == 0
    assert config.runner.docker == DockerConfig(image="docker:24.0.5-cli")
    assert config.runner.docker.services_privileged is None
    assert config.runner.docker.pull_policies == ("always",)
    assert config.runner.feature_flags == {}
    assert config.docker is config.runner.docker


@pytest.mark.parametrize(("timeout", "seconds"), [(0, 30), (-1, None), (-30, None), (45, 45), (1, 1)])
def test_wait_for_services_timeout(timeout: int, seconds: int | None) -> None:
    assert DockerConfig(wait_for_services_timeout=timeout).services_wait_seconds == seconds


@pytest.mark.parametrize(
    ("privileged", "services_privileged", "expected"),
    [(False, None, False), (True, None, True), (True, False, False), (False, True, True)],
)
def test_service_privileged(privileged: bool, services_privileged: bool | None, expected: bool) -> None:
    docker = DockerConfig(privileged=privileged, services_privileged=services_privileged)

    assert docker.service_privileged is expected


def test_pull_policy_string(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + '    pull_policy = "if-not-present"\n')

    assert config.runner.docker.pull_policy == ("if-not-present",)


def test_runner_selection(tmp_path: Path) -> None:
    assert load(tmp_path, FULL).runner.name == "dind"
    assert load(tmp_path, FULL, "dood").runner.name == "dood"
    assert load(tmp_path, FULL, "dood").runner.docker.volumes == (
        "/var/run/docker.sock:/var/run/docker.sock",)


def test_runner_selection_unknown_name(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)

    with pytest.raises(InputError) as raised:
        load_runner_config(path, "missing")

    assert str(raised.value) == (f'{path}: runners: no runner named "missing"; '
                                 "use one of: 'dind', 'dood'")


def test_unsupported_keys_warn(tmp_path: Path, caplog) -> None:
    text = MINIMAL + '    dns = ["127.0.0.1"]\n  [runners.cache]\n    Type = "s3"\n'
    path = write(tmp_path, "log_level = \"debug\"\n" + text)

    with caplog.at_level(logging.WARNING, logger="harness.runner_config"):
        config = load_runner_config(path)

    # Catches a key GitLab Runner accepts, which the harness documents as ignored, turned into an error.
    assert config.warnings == (
        f"{path}: log_level: is not supported by the harness and is ignored",
        f"{path}: runners[0].cache: is not supported by the harness and is ignored",
        f"{path}: runners[0].docker.dns: is not supported by the harness and is ignored",
    )
    assert [record.getMessage() for record in caplog.records] == list(config.warnings)


UNKNOWN_KEYS = [
    ('concurent = 2\n' + MINIMAL, "concurent", "did you mean `concurrent`?"),
    (MINIMAL.replace('executor = "docker"', 'executor = "docker"\n  buidls_dir = "/b"'),
     "runners[0].buidls_dir", "did you mean `builds_dir`?"),
    (MINIMAL + '    privilegd = true\n', "runners[0].docker.privilegd", "did you mean `privileged`?"),
    (MINIMAL + '    colour = "red"\n', "runners[0].docker.colour", "remove it or use one of: "),
    (MINIMAL + '    [[runners.docker.services]]\n      name = "d"\n      aliass = "x"\n',
     "runners[0].docker.services[0].aliass", "did you mean `alias`?"),
]


@pytest.mark.parametrize(("text", "key", "fix"), UNKNOWN_KEYS, ids=[case[1] for case in UNKNOWN_KEYS])
def test_unknown_key_rejected(tmp_path: Path, text: str, key: str, fix: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(InputError) as raised:
        load_runner_config(path)

    # Catches a misspelled key that is only warned about while its setting silently does nothing.
    assert str(raised.value).startswith(f"{path}: {key}: unknown key; {fix}"), raised.value


def test_feature_flag_without_prefix_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  [runners.feature_flags]\n    NETWORK_PER_BUILD = true\n")

    with pytest.raises(InputError) as raised:
        load_runner_config(path)

    # Catches a flag that is dropped because its name lacks the FF_ prefix.
    assert str(raised.value) == (f"{path}: runners[0].feature_flags.NETWORK_PER_BUILD: unknown feature flag; "
                                 "feature flag names start with FF_, for example FF_NETWORK_PER_BUILD")


TYPE_ERRORS = [
    ("privileged = \"true\"", "runners[0].docker.privileged", "expected true or false, got a string"),
    ("volumes = \"/cache\"", "runners[0].docker.volumes", "expected a list of strings, got a string"),
    ("volumes = [1]", "runners[0].docker.volumes", "expected a list of strings, got an array"),
    ("wait_for_services_timeout = \"30\"", "runners[0].docker.wait_for_services_timeout",
     "expected an integer, got a string"),
    ("wait_for_services_timeout = true", "runners[0].docker.wait_for_services_timeout",
     "expected an integer, got a boolean"),
    ("network_mtu = 1.5", "runners[0].docker.network_mtu", "expected an integer, got a float"),
    ("helper_image = 3", "runners[0].docker.helper_image", "expected a string, got an integer"),
    ("pull_policy = 1", "runners[0].docker.pull_policy",
     "expected a string or a list of strings, got an integer"),
    ("services_privileged = 1", "runners[0].docker.services_privileged",
     "expected true or false, got an integer"),
]


@pytest.mark.parametrize(("line", "key", "problem"), TYPE_ERRORS)
def test_docker_type_errors(tmp_path: Path, line: str, key: str, problem: str) -> None:
    message = error_of(tmp_path, MINIMAL + f"    {line}\n")

    assert message.startswith(f"{tmp_path / 'config.toml'}: {key}: {problem}; write ")


@pytest.mark.parametrize(
    ("text", "key", "fragments"),
    [
        ("concurrent = \"2\"\n" + MINIMAL, "concurrent", ["expected an integer, got a string"]),
        ("concurrent = 0\n" + MINIMAL, "concurrent", ["must be at least 1", "set concurrent = 1"]),
        ("check_interval = 1.5\n" + MINIMAL, "check_interval", ["expected an integer, got a float"]),
        ("concurrent = 1\n", "runners", ["missing [[runners]] entry", 'executor = "docker"']),
        ("[[runners]]\n  name = \"x\"\n  [runners.docker]\n", "runners[0].executor",
         ["missing executor", "supported: docker"]),
        ("[[runners]]\n  executor = \"shell\"\n", "runners[0].executor",
         ['executor "shell" is not supported', 'set executor = "docker"', "supported: docker"]),
        ("[[runners]]\n  executor = \"docker\"\n", "runners[0].docker",
         ["missing [runners.docker] table", "add [runners.docker]"]),
        ("[[runners]]\n  executor = \"docker\"\n  docker = 1\n", "runners[0].docker",
         ["expected a table, got an integer"]),
        ("[[runners]]\n  executor = \"docker\"\n  limit = \"2\"\n  [runners.docker]\n",
         "runners[0].limit", ["expected an integer, got a string"]),
        ("[[runners]]\n  executor = \"docker\"\n  environment = [\"NOVALUE\"]\n  [runners.docker]\n",
         "runners[0].environment[0]", ['"NOVALUE" is not NAME=value', 'write each entry as "NAME=value"']),
        (MINIMAL + "    pull_policy = [\"sometimes\"]\n", "runners[0].docker.pull_policy",
         ['unknown pull policy "sometimes"', "use always, if-not-present, never"]),
        (MINIMAL + "    services = \"docker:dind\"\n", "runners[0].docker.services",
         ["expected a list of tables, got a string", "[[runners.docker.services]]"]),
        (MINIMAL + "    [[runners.docker.services]]\n      alias = \"x\"\n", "runners[0].docker.services[0].name",
         ["missing service image name"]),
        (MINIMAL + "    [[runners.docker.services]]\n      name = \"d\"\n      command = \"--x\"\n",
         "runners[0].docker.services[0].command", ["expected a list of strings, got a string"]),
        (MINIMAL + "  [runners.feature_flags]\n    FF_NETWORK_PER_BUILD = \"true\"\n",
         "runners[0].feature_flags.FF_NETWORK_PER_BUILD", ["expected true or false, got a string"]),
    ],
)
def test_config_errors(tmp_path: Path, text: str, key: str, fragments: list[str]) -> None:
    message = error_of(tmp_path, text)

    assert message.startswith(f"{tmp_path / 'config.toml'}: {key}: ")
    for fragment in fragments:
        assert fragment in message


def test_malformed_toml(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[[runners]]\n  executor = docker\n")

    assert message.startswith(f"{tmp_path / 'config.toml'}: invalid TOML: ")
    assert "line 2" in message
    assert "column" in message
    assert message.endswith("; fix the syntax at that position")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as raised:
        load_runner_config(tmp_path / "nope.toml")

    assert str(raised.value) == f"{tmp_path / 'nope.toml'}: file not found; pass the path of the runner's config.toml"


def test_to_dict_is_json_and_toml_shaped(tmp_path: Path) -> None:
    data = load(tmp_path, FULL).to_dict()

    assert json.loads(json.dumps(data)) == data
    assert data["concurrent"] == 4
    assert data["runners"][0]["docker"]["volumes"] == ["/certs/client", "/cache"]
    assert data["runners"][0]["docker"]["services"][0]["alias"] == "dind docker"
    assert data["runners"][0]["feature_flags"] == {"FF_NETWORK_PER_BUILD": True, "FF_USE_FASTZIP": False}
    assert "services_privileged" not in data["runners"][1]["docker"]


@pytest.mark.parametrize("runner_name", [None, "dind", "dood"])
def test_dict_round_trip(tmp_path: Path, runner_name: str | None) -> None:
    config = load(tmp_path, FULL, runner_name)

    again = RunnerConfig.from_dict(json.loads(json.dumps(config.to_dict())), config.path,
                                   runner_name)

    assert again == config


def test_from_dict_validates(tmp_path: Path) -> None:
    data = load(tmp_path, MINIMAL).to_dict()
    data["runners"][0]["docker"]["privileged"] = "yes"

    with pytest.raises(InputError) as raised:
        RunnerConfig.from_dict(data, "shipped.json")

    assert str(raised.value).startswith("shipped.json: runners[0].docker.privileged: expected true or false")


def test_with_wiring_appends_without_duplicates(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)

    wired = config.with_wiring(volumes=["/cache", "/srv/certs:/certs:ro", "/srv/certs:/certs:ro"],
                               extra_hosts=["registry.cn-beijing.aliyuncs.com:172.17.0.5"],
                               environment=["HARNESS=1"])

    assert wired.runner.docker.volumes == ("/certs/client", "/cache", "/srv/certs:/certs:ro")
    assert wired.runner.docker.extra_hosts == ("registry.local:127.0.0.1",
                                               "registry.cn-beijing.aliyuncs.com:172.17.0.5")
    assert wired.runner.environment == ("DOCKER_DRIVER=overlay2", "EMPTY=", "HARNESS=1")
    assert wired.runners[1].docker.volumes == ("/var/run/docker.sock:/var/run/docker.sock",
                                               "/cache", "/srv/certs:/certs:ro")
    assert config.runner.docker.volumes == ("/certs/client", "/cache")
    assert replace(wired, runners=config.runners) == config


@pytest.mark.parametrize(
    ("flags", "variables", "default", "expected"),
    [
        ({"FF_X": True}, {"FF_X": "false"}, False, True),
        ({"FF_X": False}, {"FF_X": "true"}, True, False),
        ({}, {"FF_X": "true"}, False, True),
        ({}, {"FF_X": "1"}, False, True),
        ({}, {"FF_X": "T"}, False, True),
        ({}, {"FF_X": "0"}, True, False),
        ({}, {"FF_X": "yes"}, True, False),
        ({}, {"FF_X": ""}, True, True),
        ({}, {}, True, True),
        ({}, None, False, False),
    ],
)
def test_feature_flag_resolution(flags: dict, variables: dict | None, default: bool, expected: bool) -> None:
    runner = RunnerSettings(feature_flags=flags)

    assert runner.feature_flag("FF_X", variables, default) is expected


def test_imports_only_standard_library() -> None:
    code = ("import sys, harness.runner_config; "
            "bad = [m for m in ('yaml', 'docker', 'requests') if m in sys.modules]; "
            "print(*bad); sys.exit(1 if bad else 0)")

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])

    assert result.returncode == 0, result.stdout + result.stderr
