"""Masked variables stay hidden in traces, logs, reports and error messages of real jobs.

One DinD pipeline against the harness registry prints the registry password and the job token
plainly, in base64 and inside a ``docker login`` auth file, and ends in a failing ``docker
login``. A second job names an image after the job token, so the pull error quotes it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest

from harness.registry import Registry
from harness.report import render_report
from harness.run import RunResult, run_scenario
from harness.scenario import load_scenario

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = REPO_ROOT / "scenarios" / "seed"
HOSTNAME = "registry.secrets.example.com"
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{12,}={0,2}")

SCENARIO_TOML = f"""
name = "secrets"
purpose = "jobs that print their masked variables"

[project]
path = "project"
namespace = "group"
name = "secrets"
branch = "main"

[registry]
hostname = "{HOSTNAME}"

[modes.dind]
pipeline = "project/.gitlab-ci.yml"
runner_config = "config.dind.toml"
"""

PIPELINE = r"""
image: docker:stable
services:
  - docker:19.03.7-dind
variables:
  DOCKER_HOST: tcp://docker:2375
  DOCKER_TLS_CERTDIR: ""

Echo:
  allow_failure: true
  script:
    - echo "plain $REGISTRY_PASSWORD token $CI_JOB_TOKEN registry $CI_REGISTRY_PASSWORD"
    - printf '%s' "$REGISTRY_PASSWORD" | base64
    - printf '%s:%s' "$REGISTRY_USER" "$REGISTRY_PASSWORD" | base64
    - printf 'x:%s' "$REGISTRY_PASSWORD" | base64
    - printf 'abc:%s' "$REGISTRY_PASSWORD" | base64
    - printf '%s' "$CI_JOB_TOKEN" | base64
    - echo "url https://$REGISTRY_USER:$REGISTRY_PASSWORD@$REGISTRY_ADDRESS/v2/"
    - docker volume create "vol-$REGISTRY_PASSWORD"
    - echo "$REGISTRY_PASSWORD" | docker login -u "$REGISTRY_USER" --password-stdin "$REGISTRY_ADDRESS"
    - cat "$HOME/.docker/config.json"
    - docker login -u "$REGISTRY_USER" -p "wrong-$REGISTRY_PASSWORD" "$REGISTRY_ADDRESS"

PullToken:
  image: busybox:$CI_JOB_TOKEN
  services: []
  script:
    - "true"
"""


def encoded_forms(secret: str) -> dict[str, str]:
    """Return the shapes in which ``secret`` could leak, by name."""
    return {"plain": secret,
            "base64": base64.b64encode(secret.encode()).decode(),
            "percent-encoded": urllib.parse.quote(secret, safe="")}


def leaks(result: RunResult, extra: dict[str, str]) -> list[str]:
    """Return ``where: form`` for every shape of every masked value found in the run's texts."""
    texts = {f"trace of {job.name}": job.trace for job in result.jobs}
    texts |= {f"details of {job.name}": json.dumps(job.details) for job in result.jobs}
    texts |= {"registry log": result.registry_log, "summary": result.summary(),
              "placement table": result.placement.table(), "report": render_report([result]), **extra}
    forms = {f"{name} of secret {index}": form for index, secret in enumerate(result.secrets)
             for name, form in encoded_forms(secret).items()}
    found = [f"{where}: {name}" for name, form in forms.items() for where, text in texts.items() if form in text]

    # Base64 of a longer text, such as a docker auth entry "user:password", hides the secret at
    # any offset, so every base64-looking run is decoded and searched.
    for where, text in texts.items():
        decoded = decode_base64_runs(text)
        found += [f"{where}: base64 containing secret {index}" for index, secret in enumerate(result.secrets)
                  if secret.encode() in decoded]
    return found


def decode_base64_runs(text: str) -> bytes:
    """Return the decoded bytes of every run of 12 or more base64 characters in ``text``."""
    decoded = []
    for run in BASE64_RUN.findall(text):
        body = run.rstrip("=")
        # A run may start mid-group, so each of the four alignments is decoded.
        for start in range(4):
            part = body[start:]
            if len(part) % 4 == 1:
                part = part[:-1]
            decoded.append(base64.b64decode(part + "=" * (-len(part) % 4)))
    return b"\n".join(decoded)


@pytest.fixture
def secrets_scenario(tmp_path: Path):
    folder = tmp_path / "secrets"
    (folder / "project").mkdir(parents=True)
    (folder / "scenario.toml").write_text(SCENARIO_TOML)
    (folder / "project" / ".gitlab-ci.yml").write_text(PIPELINE)
    (folder / "project" / "README.md").write_text("secrets\n")
    shutil.copy(SEED / "config.dind.toml", folder / "config.dind.toml")
    return load_scenario(folder)


@pytest.mark.engine
@pytest.mark.images
@pytest.mark.registry
@pytest.mark.dind
def test_secrets_hidden_from_every_output(engine_client, secrets_scenario, caplog) -> None:
    caplog.set_level(logging.DEBUG)

    result = run_scenario(engine_client, secrets_scenario, "dind")

    echo, pull = result.job("Echo"), result.job("PullToken")
    # The registry user and password, and each job's token.
    assert len(result.secrets) >= 4, len(result.secrets)
    # Both jobs really ran into the failures whose messages could quote a secret.
    assert echo.status == "failed", echo.trace
    assert "Login Succeeded" in echo.trace
    assert "unauthorized" in echo.trace.lower()
    assert '"auth": "' in echo.trace
    assert echo.trace.count("[MASKED]") >= 8, echo.trace
    assert pull.status == "failed", pull.trace
    assert "busybox:[MASKED]" in pull.trace
    # The volume named after the password is listed, under its masked name.
    assert "vol-[MASKED]" in result.placement.table()
    assert result.leaked_secrets() == []
    assert leaks(result, {"caplog": caplog.text}) == []


def test_registry_credentials_random_per_instance() -> None:
    first, second = Registry(client=None), Registry(client=None)

    assert first.password != second.password
    assert len(first.password) >= 16
