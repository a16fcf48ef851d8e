"""The docker executor on the real engine: DinD, DooD, networks, volumes, failures, runner container."""

from __future__ import annotations

import io
import json
import re
import secrets
import subprocess
from pathlib import Path

import docker
import docker.errors
import pytest

from harness import images, labels
from harness.executor import DockerExecutor, RunnerCompat, naming
from harness.executor.settings import session_system_id
from harness.executor.runner_labels import PREFIX as RUNNER_LABEL

pytestmark = pytest.mark.engine

REPOSITORY = Path(__file__).resolve().parent.parent
IMAGES = ["helper", "runner", "busybox", "docker-cli", "dind", "httpd"]
SECRET = "hunter2-masked-value"
DIND_VARIABLES = [("DOCKER_HOST", "tcp://docker:2375"), ("DOCKER_TLS_CERTDIR", "")]


@pytest.fixture(scope="module")
def client():
    client = docker.from_env()
    images.ensure_images(client, IMAGES)
    yield client
    client.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory, client):
    """A git repository holding ``busybox.tar``, so a job can load busybox into its dind daemon."""
    directory = tmp_path_factory.mktemp("project")
    with open(directory / "busybox.tar", "wb") as archive:
        for chunk in client.images.get("busybox:latest").save(named=True):
            archive.write(chunk)
    (directory / "README").write_text("harness executor test project\n")
    git = ["git", "-C", str(directory), "-c", "user.name=Harness", "-c", "user.email=harness@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "Add busybox archive"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    return directory, sha


@pytest.fixture
def job(client):
    """Return a fresh job id and runner token, and remove whatever a job with that id left behind."""
    job_id = secrets.randbelow(10**8) + 10**8
    token = "glrt-t1_" + secrets.token_hex(8)
    yield job_id, token

    selector = {"label": [f"{RUNNER_LABEL}.job.id={job_id}"]}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        network.remove()
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)


def make_payload(job_id: int, sha: str, script: list[str], image: str = "busybox:latest",
                 services: list[dict] | None = None, variables: list[tuple[str, str]] = (),
                 after_script: list[str] = ()) -> dict:
    """Return a job payload in the shape GitLab sends a runner."""
    entries = [
        {"key": "CI_JOB_TOKEN", "value": "job-token-" + secrets.token_hex(4), "public": False, "masked": True},
        {"key": "CI_PIPELINE_ID", "value": "7", "public": True},
        {"key": "MY_SECRET", "value": SECRET, "public": False, "masked": True},
        *({"key": key, "value": value, "public": True} for key, value in variables),
    ]
    steps = [{"name": "script", "script": script, "timeout": 600, "when": "on_success", "allow_failure": False}]
    if after_script:
        steps.append({"name": "after_script", "script": list(after_script), "timeout": 300, "when": "always",
                      "allow_failure": True})
    return {
        "id": job_id, "token": "unused", "allow_git_fetch": False,
        "job_info": {"name": "test", "stage": "test", "project_id": 42, "project_name": "proj"},
        "git_info": {"repo_url": "http://fake.local/group/proj.git", "ref": "main", "sha": sha,
                     "before_sha": "0" * 40, "ref_type": "branch", "protected": False},
        "runner_info": {"timeout": 600},
        "variables": entries, "steps": steps, "image": {"name": image}, "services": services or [],
    }


def make_config(token: str, **docker_table) -> dict:
    docker_table.setdefault("pull_policy", ["if-not-present"])
    return {"runners": [{"name": "test-runner", "token": token, "executor": "docker", "docker": docker_table}]}


class Recorder:
    """An observer that records what the placement module would see, while it still exists."""

    def __init__(self, client, probe_command: list[str] | None = None) -> None:
        self.client = client
        self.probe_command = probe_command
        self.calls: list[str] = []
        self.probe_output: dict[str, str] = {}
        self.inspected: dict[str, dict] = {}
        self.network: dict | None = None

    def job_started(self, context) -> None:
        self.calls.append("job_started")
        assert context.containers == []

    def services_ready(self, context, services) -> None:
        self.calls.append("services_ready")
        for service in services if self.probe_command else ():
            execution = self.client.api.exec_create(service.container_id, self.probe_command)
            self.probe_output[service.container_name] = self.client.api.exec_start(execution["Id"]).decode()

    def before_cleanup(self, context, services, build_container) -> None:
        self.calls.append("before_cleanup")
        for container in context.containers:
            self.inspected[container["type"] + ":" + container["name"]] = self.client.api.inspect_container(
                container["id"])
        if context.network_mode and context.per_build_network:
            self.network = self.client.api.inspect_network(context.network_mode)

    def container(self, kind: str) -> dict:
        matches = [details for key, details in self.inspected.items() if key.startswith(kind + ":")]
        assert len(matches) == 1, sorted(self.inspected)
        return matches[0]


def run_job(client, config: dict, payload: dict, sources, observer=None, compat=None):
    stream = io.StringIO()
    result = DockerExecutor(client, config, compat=compat, observer=observer).run(payload, sources, stream)
    assert stream.getvalue() == result.trace
    return result


def assert_job_resources_gone(client, result) -> None:
    for container in result.containers:
        with pytest.raises(docker.errors.NotFound):
            client.api.inspect_container(container["id"])
    for volume in result.volumes:
        if not volume["reusable"]:
            with pytest.raises(docker.errors.NotFound):
                client.api.inspect_volume(volume["name"])
    for network in result.networks:
        with pytest.raises(docker.errors.NotFound):
            client.api.inspect_network(network["id"])


@pytest.mark.dind
def test_dind_privileged_job_succeeds(client, project, job):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, [
        "docker info --format 'server {{.ServerVersion}}'",
        "echo secret is $MY_SECRET",
        "docker load -i busybox.tar",
        "docker run --pull never --rm busybox:latest echo inner-container-ran",
    ], image="docker:stable", services=[{"name": "docker:19.03.7-dind"}], variables=DIND_VARIABLES,
        after_script=["echo after_script sees $CI_JOB_STATUS"])
    recorder = Recorder(client, ["docker", "version", "--format", "{{.Server.Version}}"])

    result = run_job(client, make_config(token, privileged=True, volumes=["/cache"]), payload, directory, recorder)

    assert result.status == "success", result.trace
    for line in ['Preparing the "docker" executor', "Using docker image sha256:",
                 "Starting service docker:19.03.7-dind ...",
                 "Waiting for services to be up and running (timeout 30 seconds)...",
                 "Getting source from Git repository", 'Executing "step_script" stage of the job script',
                 "inner-container-ran", "Running after_script", "after_script sees success", "Job succeeded"]:
        assert line in result.trace
    assert "secret is [MASKED]" in result.trace
    assert SECRET not in result.trace
    assert "probably didn't start properly" not in result.trace
    assert recorder.calls == ["job_started", "services_ready", "before_cleanup"]
    assert list(recorder.probe_output.values())[0].strip()

    short = naming.short_token(token)
    prefix = result.container_prefix
    assert re.fullmatch(rf"runner-{short}-project-42-concurrent-0-[0-9a-f]{{16}}", prefix)
    assert {(container["type"], container["name"]) for container in result.containers} == {
        ("service", f"{prefix}-docker-0"), ("predefined", f"{prefix}-predefined"), ("build", f"{prefix}-build")}

    service = recorder.container("service")
    build = recorder.container("build")
    predefined = recorder.container("predefined")
    assert service["HostConfig"]["Privileged"]
    assert build["Config"]["Hostname"] == f"runner-{short}-project-42-concurrent-0"
    assert build["Config"]["Labels"][f"{RUNNER_LABEL}.type"] == "build"
    assert build["Config"]["Labels"][f"{RUNNER_LABEL}.job.id"] == str(job_id)
    assert service["Config"]["Labels"][f"{RUNNER_LABEL}.service"] == "docker"
    assert service["Config"]["Labels"][f"{RUNNER_LABEL}.service.version"] == "19.03.7-dind"
    assert service["Config"]["Labels"][labels.MANAGED] == "true"
    service_ip = result.services[0]["ip"]
    assert f"docker:{service_ip}" in build["HostConfig"]["ExtraHosts"]
    assert f"docker:{service_ip}" in predefined["HostConfig"]["ExtraHosts"]

    cache = naming.cache_volume_name(naming.project_real_unique_name(token, session_system_id(), 42, 0), "/cache")
    builds = naming.cache_volume_name(prefix, "/builds")
    for details in (service, build, predefined):
        assert f"{cache}:/cache" in details["HostConfig"]["Binds"]
        assert f"{builds}:/builds" in details["HostConfig"]["Binds"]

    service_environment = dict(entry.split("=", 1) for entry in service["Config"]["Env"])
    assert "CI_JOB_TOKEN" not in service_environment
    assert "MY_SECRET" not in service_environment
    assert service_environment["CI_PROJECT_DIR"] == "/builds/group/proj"
    assert service_environment["DOCKER_TLS_CERTDIR"] == ""

    assert_job_resources_gone(client, result)
    assert client.api.inspect_volume(cache)["Labels"][f"{RUNNER_LABEL}.type"] == "cache"


@pytest.mark.dind
def test_dind_unprivileged_warns_and_fails(client, project, job):
    directory, sha = project
    job_id, token = job
    # dockerd opens its TCP listener before it fails on iptables, so a check of port 2375 can
    # succeed in that first second. Without TLS nothing ever listens on 2376, so pinning the
    # check there makes it time out every time and the WARNING block is always written.
    service = {"name": "docker:19.03.7-dind",
               "variables": [{"key": "HEALTHCHECK_TCP_PORT", "value": "2376", "public": True}]}
    payload = make_payload(job_id, sha, ["docker info"], image="docker:stable",
                           services=[service], variables=DIND_VARIABLES)

    config = make_config(token, privileged=False, wait_for_services_timeout=10)
    # A network of the job's own: on the default bridge another test's dind could take the dead
    # service's address, and the job's docker info then succeeded against that daemon (seen in CI).
    config["runners"][0]["feature_flags"] = {"FF_NETWORK_PER_BUILD": True}
    result = run_job(client, config, payload, directory)

    service_name = f"{result.container_prefix}-docker-0"
    warning = re.search(r"\*\*\* WARNING:\x1b\[0;m Service (\S+) probably didn't start properly\.\n\n"
                        r"Health check error:\n(.*)\n\nHealth check container logs:\n(.*?)\n\n"
                        r"Service container logs:\n(.*?)\n\n\x1b\[0;33m\*{9}", result.trace, re.DOTALL)
    assert warning, result.trace
    assert warning.group(1) == service_name
    assert warning.group(2) == f'service "{service_name}-wait-for-service" timeout'
    assert "waiting for TCP connection to" in warning.group(3)
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ", warning.group(4), re.MULTILINE)
    # The service's own log names why it died: without privileges dockerd cannot set up iptables.
    assert "failed to start daemon" in warning.group(4)
    assert "Waiting for services to be up and running (timeout 10 seconds)..." in result.trace
    # The client prints "Cannot connect" when a connection is refused or times out, and "error during
    # connect" for other dial errors, such as a service name that no longer resolves.
    assert re.search(r"Cannot connect to the Docker daemon at tcp://docker:2375|error during connect: .*docker:2375",
                     result.trace), result.trace[-3000:]
    assert result.status == "failed"
    assert result.exit_code == 1
    assert "ERROR: Job failed: exit code 1" in result.trace
    assert_job_resources_gone(client, result)


@pytest.mark.dood
def test_dood_socket_bind_sees_host_engine(client, project, job):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["docker ps --format 'running {{.Names}}'"], image="docker:stable")
    config = make_config(token, volumes=["/var/run/docker.sock:/var/run/docker.sock"])

    result = run_job(client, config, payload, directory)

    assert result.status == "success", result.trace
    assert f"running {result.container_prefix}-build" in result.trace
    assert_job_resources_gone(client, result)


def test_per_build_network_resolves_alias(client, project, job):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["wget -q -O - http://web/", "echo network=$CI_BUILD_NETWORK_NAME"],
                           services=[{"name": "httpd:latest", "alias": "web"}], variables=[("GIT_STRATEGY", "none")])
    config = make_config(token, network_mtu=1400)
    config["runners"][0]["feature_flags"] = {"FF_NETWORK_PER_BUILD": True}
    recorder = Recorder(client)

    result = run_job(client, config, payload, None, recorder)

    network = naming.network_name(naming.short_token(token), 42, 0, job_id)
    assert result.status == "success", result.trace
    assert "It works!" in result.trace
    assert "probably didn't start properly" not in result.trace
    assert f"network={network}" in result.trace
    assert result.networks[0]["name"] == network
    assert recorder.network["Labels"][f"{RUNNER_LABEL}.job.id"] == str(job_id)
    assert recorder.network["Options"]["com.docker.network.driver.mtu"] == "1400"
    build = recorder.container("build")
    assert set(build["NetworkSettings"]["Networks"][network]["Aliases"]) >= {"build", f"{result.container_prefix}-build"}
    service = recorder.container("service")
    assert "web" in service["NetworkSettings"]["Networks"][network]["Aliases"]
    assert "Skipping Git repository setup" in result.trace
    assert_job_resources_gone(client, result)


def test_legacy_links_on_default_bridge(client, project, job):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["wget -q -O - http://web/", "echo link=$WEB_PORT_80_TCP_ADDR"],
                           services=[{"name": "httpd:latest", "alias": "web"}], variables=[("GIT_STRATEGY", "none")])
    recorder = Recorder(client)

    result = run_job(client, make_config(token), payload, None, recorder, RunnerCompat.for_version("18.6.0"))

    assert result.status == "success", result.trace
    assert "It works!" in result.trace
    assert "probably didn't start properly" not in result.trace
    assert f"link={result.services[0]['ip']}" in result.trace
    assert recorder.container("build")["HostConfig"]["Links"]


def test_failing_script_stops_job(client, project, job):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["echo first-command", "exit 3", "echo never-printed"],
                           after_script=["echo after_script sees $CI_JOB_STATUS", "exit 9"])

    result = run_job(client, make_config(token, disable_cache=True, volumes=["/cache"]), payload, directory)

    assert result.status == "failed"
    assert result.exit_code == 3
    assert result.failure_reason == "script_failure"
    assert "first-command" in result.trace
    assert "never-printed\n" not in result.trace.replace("$ echo never-printed", "")
    assert "after_script sees failed" in result.trace
    assert "WARNING: after_script failed, but job will continue unaffected: exit code 9" in result.trace
    assert result.trace.rstrip().endswith("ERROR: Job failed: exit code 3\x1b[0;m")
    assert all(not volume["reusable"] for volume in result.volumes)
    assert_job_resources_gone(client, result)


def test_always_pull_policy_fails_offline(client, project, job):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["true"])

    result = run_job(client, make_config(token, pull_policy=["always"]), payload, directory)

    assert result.status == "failed"
    assert result.failure_reason == "runner_system_failure"
    assert 'ERROR: Job failed (system failure): image "dind-dood-harness/helper:latest"' in result.trace
    assert 'pull_policy = ["if-not-present"]' in result.trace
    assert_job_resources_gone(client, result)


def test_cli_in_runner_container(client, project, job, tmp_path):
    """``python3 -m harness.executor`` under Debian's Python and python3-docker 5.0.3."""
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["cat README", "echo $MY_SECRET", "wget -q -O - http://web/"],
                           services=[{"name": "httpd:latest", "alias": "web"}])
    (tmp_path / "job.json").write_text(json.dumps(payload))
    (tmp_path / "config.toml").write_text(
        f'[[runners]]\nname = "cli"\ntoken = "{token}"\nexecutor = "docker"\n'
        '[runners.docker]\npull_policy = ["if-not-present"]\nvolumes = ["/cache"]\n'
        '[runners.feature_flags]\nFF_NETWORK_PER_BUILD = true\n')
    volumes = {
        "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
        str(REPOSITORY / "harness"): {"bind": "/opt/harness/harness", "mode": "ro"},
        str(tmp_path): {"bind": "/work", "mode": "rw"},
        str(directory): {"bind": "/project", "mode": "ro"},
    }
    command = ["python3", "-m", "harness.executor", "--config", "/work/config.toml", "--runner", "cli",
               "--job", "/work/job.json", "--sources", "/project", "--result", "/work/result.json"]
    container = client.containers.run("dind-dood-harness/runner:latest", command, volumes=volumes, detach=True,
                                      labels=labels.managed_labels("runner"),
                                      environment={"HARNESS_SESSION_ID": labels.session_id()})
    try:
        status = container.wait(timeout=300)
        output = container.logs().decode()
    finally:
        container.remove(force=True)

    assert status["StatusCode"] == 0, output
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "success"
    assert "harness executor test project" in output
    assert "It works!" in output
    assert result["networks"][0]["name"] == naming.network_name(naming.short_token(token), 42, 0, job_id)
    assert SECRET not in output
    assert "Job succeeded" in output
    build = next(container for container in result["containers"] if container["type"] == "build")
    with pytest.raises(docker.errors.NotFound):
        client.api.inspect_container(build["id"])


def test_cache_dir_makes_host_bind(client, project, job, tmp_path):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["echo cached > /cache/marker"], variables=[("GIT_STRATEGY", "none")])
    config = make_config(token, volumes=["/cache"], cache_dir=str(tmp_path))

    result = run_job(client, config, payload, None)

    assert result.status == "success", result.trace
    reusable = naming.project_real_unique_name(token, session_system_id(), 42, 0)
    marker = tmp_path / reusable / naming.path_hash("/cache") / "marker"
    assert marker.read_text() == "cached\n"
    assert [volume["destination"] for volume in result.volumes] == ["/builds"]
    assert_job_resources_gone(client, result)
    subprocess.run(["rm", "-rf", str(tmp_path / reusable)], check=True)


def test_cache_volume_per_session(client, project, job, monkeypatch):
    """Two sessions with one runner token on one engine get a reusable cache volume each.

    The first teardown fails on a shared volume while the second session's job mounts it, and the
    second session does not remove a volume labelled as the first's.
    """
    directory, sha = project
    job_id, token = job
    config = make_config(token, volumes=["/cache"])
    volumes = {}
    try:
        for offset, session in enumerate(("0000aaaa", "0000bbbb")):
            monkeypatch.setattr(labels, "_session_id", session)
            payload = make_payload(job_id + offset, sha, ["true"], variables=[("GIT_STRATEGY", "none")])

            result = run_job(client, config, payload, None)

            assert result.status == "success", result.trace
            [volume] = [volume for volume in result.volumes if volume["reusable"]]
            volumes[session] = volume
    finally:
        for name in {volume["name"] for volume in volumes.values()}:
            client.api.remove_volume(name, force=True)

    assert volumes["0000aaaa"]["name"] != volumes["0000bbbb"]["name"]
    assert volumes["0000bbbb"]["new"], "the second session reused the first session's cache volume"


def test_duplicate_volume_destination_fails(client, project, job, tmp_path):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["true"], variables=[("GIT_STRATEGY", "none")])
    config = make_config(token, volumes=[f"{tmp_path}:/data", "/data"])

    result = run_job(client, config, payload, None)

    assert result.status == "failed"
    assert result.failure_reason == "runner_system_failure"
    assert 'volume for container path "/data" is already defined' in result.trace
    assert result.containers == []


def test_job_timeout_kills_script(client, project, job):
    directory, sha = project
    job_id, token = job
    payload = make_payload(job_id, sha, ["echo started", "sleep 60", "echo never-printed"],
                           variables=[("GIT_STRATEGY", "none")])
    payload["runner_info"]["timeout"] = 5

    result = run_job(client, make_config(token), payload, None)

    assert result.status == "failed"
    assert result.failure_reason == "job_execution_timeout"
    assert result.timings["step_script"] < 30
    assert "ERROR: Job failed: execution took longer than 5 seconds" in result.trace
    assert_job_resources_gone(client, result)
