"""GitLab Runner generations in the executor, on the real engine: a container per stage before
16.0, Docker links before 18.7 and /etc/hosts entries after, cache volume names before 18.4."""

from __future__ import annotations

import docker.errors
import pytest

from harness.executor import RunnerCompat, naming
from harness.executor.settings import session_system_id
from test_executor import (Recorder, assert_job_resources_gone, client, job, make_config,  # noqa: F401
                           make_payload, project, run_job)

pytestmark = pytest.mark.engine

# The trace echoes each command, so the output is split into words that only the echo joins.
AFTER_SCRIPT = ['cat /tmp/marker 2>/dev/null || echo "no" "marker"']


def _names(recorder: Recorder, prefix: str) -> list[str]:
    return sorted(key.split(":", 1)[1].removeprefix(prefix + "-") for key in recorder.inspected
                  if key.startswith(("build:", "predefined:")))


def test_container_per_stage_before_16(client, project, job):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["echo kept > /tmp/marker"], after_script=AFTER_SCRIPT,
                           variables=[("GIT_STRATEGY", "none")])
    recorder = Recorder(client)

    result = run_job(client, make_config(token), payload, None, recorder, RunnerCompat.for_version("15.11.0"))

    assert result.status == "success", result.trace
    # prepare_script, get_sources, script, after_script, cleanup_file_variables: one container each.
    assert _names(recorder, result.container_prefix) == [
        "build-2", "build-3", "predefined-0", "predefined-1", "predefined-4"]
    assert "\nno marker" in result.trace
    assert_job_resources_gone(client, result)


def test_one_build_container_since_16(client, project, job):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["echo kept > /tmp/marker"], after_script=AFTER_SCRIPT,
                           variables=[("GIT_STRATEGY", "none")])
    recorder = Recorder(client)

    result = run_job(client, make_config(token), payload, None, recorder, RunnerCompat.for_version("16.0.0"))

    assert result.status == "success", result.trace
    assert _names(recorder, result.container_prefix) == ["build", "predefined"]
    assert "\nno marker" not in result.trace
    assert "\nkept" in result.trace
    assert_job_resources_gone(client, result)


@pytest.mark.parametrize("version", ["18.6.0", "18.7.0"])
def test_service_reachability_by_generation(client, project, job, version):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["wget -q -O - http://web/", "echo link=${WEB_PORT_80_TCP_ADDR:-none}"],
                           services=[{"name": "httpd:latest", "alias": "web"}], variables=[("GIT_STRATEGY", "none")])
    recorder = Recorder(client)

    result = run_job(client, make_config(token), payload, None, recorder, RunnerCompat.for_version(version))

    assert result.status == "success", result.trace
    assert "It works!" in result.trace
    host_config = recorder.container("build")["HostConfig"]
    service_ip = result.services[0]["ip"]
    if version == "18.6.0":
        assert host_config["Links"]
        assert f"web:{service_ip}" not in (host_config["ExtraHosts"] or [])
        assert f"link={service_ip}" in result.trace
    else:
        assert not host_config["Links"]
        assert f"web:{service_ip}" in host_config["ExtraHosts"]
        assert "link=none" in result.trace


@pytest.mark.parametrize("version", ["18.3.0", "18.4.0"])
def test_cache_volume_name_by_generation(client, project, job, version):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["true"], variables=[("GIT_STRATEGY", "none")])
    payload["git_info"]["protected"] = True
    compat = RunnerCompat.for_version(version)

    result = run_job(client, make_config(token, volumes=["/cache"]), payload, None, compat=compat)

    assert result.status == "success", result.trace
    [volume] = [volume for volume in result.volumes if volume["reusable"]]
    short = naming.short_token(token)
    if version == "18.3.0":
        expected = f"runner-{short}-project-42-concurrent-0-cache-{naming.path_hash('/cache')}"
    else:
        unique = naming.project_real_unique_name(token, session_system_id(), 42, 0)
        expected = f"{unique}-cache-{naming.path_hash('/cache')}-protected"
    assert volume["name"] == expected
    try:
        client.api.remove_volume(volume["name"], force=True)
    except docker.errors.NotFound:
        pass
