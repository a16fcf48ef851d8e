"""The stand-in images behave like the official ones: dind ports and TLS, the CLI's DOCKER_HOST
choice, privileged containers nested in dind, and the small images running their usual commands."""

from __future__ import annotations

import io
import secrets
import subprocess
import tarfile
import time
import urllib.request

import docker
import pytest

from harness import images, labels
from harness.errors import ReadinessTimeout

from worker_groups import DOCKER_STANDINS

pytestmark = [pytest.mark.engine, pytest.mark.images, DOCKER_STANDINS]

RUN_ID = f"{labels.session_id()}-{secrets.token_hex(3)}"
STAND_INS = ["busybox", "alpine", "node", "httpd", "docker-cli", "docker-cli-legacy", "dind", "dind-legacy"]
SOCKET = "unix:///var/run/docker.sock"


class Resources:
    """Containers, networks and volumes one test module creates, all labelled and removed at the end."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.containers: list = []
        self.networks: list = []
        self.volumes: list = []

    def name(self, role: str) -> str:
        return f"ddh-test-{RUN_ID}-{role}-{secrets.token_hex(2)}"

    def network(self, role: str):
        network = self.client.networks.create(self.name(role), labels=labels.managed_labels("test"))
        self.networks.append(network)
        return network

    def volume(self, role: str):
        volume = self.client.volumes.create(self.name(role), labels=labels.managed_labels("test"))
        self.volumes.append(volume)
        return volume

    def start(self, image: str, command=None, role: str = "container", **options):
        container = self.client.containers.run(image, command, name=self.name(role), detach=True,
                                               labels=labels.managed_labels("test"), **options)
        self.containers.append(container)
        return container

    def run(self, image: str, command=None, **options) -> tuple[int, str]:
        """Run a container to completion and return its exit code and combined output."""
        container = self.start(image, command, role="client", **options)
        status = container.wait(timeout=120)
        return status["StatusCode"], container.logs().decode()

    def remove_all(self) -> None:
        """Remove everything created, continuing past resources that are already gone."""
        removals = [lambda c=c: c.remove(force=True, v=True) for c in self.containers]
        removals += [network.remove for network in self.networks]
        removals += [lambda v=v: v.remove(force=True) for v in self.volumes]
        for remove in removals:
            try:
                remove()
            except docker.errors.NotFound:
                pass


@pytest.fixture(scope="module")
def client(engine_client):
    # exec and wait calls run for many seconds; the session client times out after a few.
    client = docker.from_env(timeout=300)
    images.ensure_images(client, names=STAND_INS)
    yield client
    client.close()


@pytest.fixture(scope="module")
def resources(client):
    created = Resources(client)
    yield created
    created.remove_all()


def wait_for_daemon(container, socket: str = SOCKET, timeout: float = 60) -> str:
    """Wait until the dockerd inside ``container`` responds on ``socket`` and return its version."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, output = container.exec_run(["docker", "-H", socket, "version", "--format", "{{.Server.Version}}"])
        if code == 0:
            return output.decode().strip()
        container.reload()
        if container.status != "running":
            break
        time.sleep(1)
    logs = container.logs(tail=20).decode()
    raise ReadinessTimeout(f"dockerd in {container.name}", timeout, logs)


def _tar_with_file(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        member = tarfile.TarInfo(name)
        member.size = len(content)
        archive.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def start_dind(resources: Resources, image: str, role: str, environment: dict[str, str], **options):
    """Start a privileged dind container with the network alias ``docker`` on its own network."""
    network = resources.network(role)
    storage = resources.volume(f"{role}-storage")
    volumes = {storage.name: {"bind": "/var/lib/docker", "mode": "rw"}}
    volumes.update(options.pop("volumes", {}))
    endpoint = resources.client.api.create_endpoint_config(aliases=["docker"])
    container = resources.start(image, role=role, privileged=True, environment=environment, volumes=volumes,
                                network=network.name, networking_config={network.name: endpoint}, **options)
    return container, network


@pytest.fixture(scope="module")
def plain_dind(resources):
    # The 1.12-era image sets no DOCKER_TLS_CERTDIR. The tcp:// DOCKER_HOST stands for a job
    # variable leaking into the service, which the entrypoint must ignore.
    container, network = start_dind(resources, "docker:1.12.6-dind", "plain-dind",
                                    {"DOCKER_HOST": "tcp://docker:2375"})
    wait_for_daemon(container)
    return container, network


@pytest.fixture(scope="module")
def tls_dind(resources):
    certs = resources.volume("client-certs")
    container, network = start_dind(resources, "docker:dind", "tls-dind", {},
                                    volumes={certs.name: {"bind": "/certs/client", "mode": "rw"}})
    wait_for_daemon(container)
    return container, network, certs


def test_dind_without_tls_serves_2375(resources, plain_dind):
    container, network = plain_dind

    code, output = resources.run("docker:cli", ["docker", "version", "--format", "{{.Server.Version}}"],
                                 network=network.name, environment={"DOCKER_TLS_CERTDIR": ""})

    assert code == 0, output
    assert output.startswith("20.10."), output


def test_dind_without_tls_closes_2376(resources, plain_dind):
    container, network = plain_dind

    code, output = resources.run("docker:1.12.6", ["docker", "-H", "tcp://docker:2376", "version"],
                                 network=network.name)

    assert code != 0
    assert "Cannot connect" in output or "connection refused" in output, output


def test_dind_ignores_tcp_docker_host(plain_dind):
    container, _ = plain_dind

    code, output = container.exec_run(["sh", "-c", "test -S /var/run/docker.sock && ps -o args= -C dockerd"])

    assert code == 0, output
    assert "--host=unix:///var/run/docker.sock" in output.decode()
    assert "--host=tcp://0.0.0.0:2375" in output.decode()
    assert "--tls=false" in output.decode()


def test_dind_image_as_client_like_upstream_test(resources, plain_dind):
    # The official image tests reach the daemon from a second container of the same image.
    _, network = plain_dind

    code, output = resources.run("docker:1.12.6-dind", ["docker", "version"], network=network.name,
                                 entrypoint=["docker-entrypoint.sh"])

    assert code == 0, output
    assert "Server:" in output


def test_dind_with_tls_serves_2376_with_client_certs(resources, tls_dind):
    _, network, certs = tls_dind
    command = ["sh", "-c", 'echo "$DOCKER_HOST $DOCKER_TLS_VERIFY $DOCKER_CERT_PATH"; '
               'docker version --format "{{.Server.Version}}"']

    code, output = resources.run("docker:cli", command, network=network.name,
                                 volumes={certs.name: {"bind": "/certs/client", "mode": "ro"}})

    assert code == 0, output
    assert output.splitlines()[0] == "tcp://docker:2376 1 /certs/client"
    assert output.splitlines()[1].startswith("20.10.")


def test_dind_with_tls_refuses_2375(resources, tls_dind):
    _, network, _ = tls_dind

    code, output = resources.run("docker:cli", ["docker", "-H", "tcp://docker:2375", "version"],
                                 network=network.name)

    assert code != 0
    assert "Cannot connect" in output or "connection refused" in output, output


def test_dind_tls_certificates(tls_dind):
    container, network, _ = tls_dind
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]

    code, names = container.exec_run(["openssl", "x509", "-in", "/certs/server/cert.pem", "-noout",
                                      "-ext", "subjectAltName"])
    _, mode = container.exec_run(["stat", "-c", "%a", "/certs/client/key.pem"])

    assert code == 0, names
    assert "DNS:docker" in names.decode()
    assert "DNS:localhost" in names.decode()
    assert f"IP Address:{address}" in names.decode()
    assert mode.decode().strip() == "644"


def test_dind_keeps_supplied_server_certs(client, resources, tls_dind):
    # Server certificates without the CA key are only verified, never re-issued.
    source, _, client_certs = tls_dind
    server_files = b"".join(source.get_archive("/certs/server")[0])
    supplied = resources.volume("supplied-certs")
    network = resources.network("supplied-dind")
    endpoint = client.api.create_endpoint_config(aliases=["docker"])
    container = client.containers.create(
        "docker:dind", name=resources.name("supplied-dind"), privileged=True, labels=labels.managed_labels("test"),
        volumes={supplied.name: {"bind": "/certs", "mode": "rw"}}, network=network.name,
        networking_config={network.name: endpoint})
    resources.containers.append(container)
    assert container.put_archive("/certs", server_files)

    container.start()
    wait_for_daemon(container)
    code, output = resources.run("docker:cli", ["docker", "version", "--format", "{{.Server.Version}}"],
                                 network=network.name,
                                 volumes={client_certs.name: {"bind": "/certs/client", "mode": "ro"}})
    _, original = source.exec_run(["cat", "/certs/server/cert.pem"])
    _, kept = container.exec_run(["cat", "/certs/server/cert.pem"])
    ca_key_code, _ = container.exec_run(["test", "-e", "/certs/ca/key.pem"])

    assert code == 0, output
    assert output.startswith("20.10."), output
    assert kept == original
    assert ca_key_code != 0
    assert "only verified" in container.logs().decode()


def test_dind_registers_wrapper_only_when_caps_missing(plain_dind):
    container, _ = plain_dind
    _, status = container.exec_run(["sed", "-n", "s/^CapBnd:[[:space:]]*//p", "/proc/self/status"])
    _, last = container.exec_run(["cat", "/proc/sys/kernel/cap_last_cap"])
    full = (1 << (int(last) + 1)) - 1
    incomplete = int(status, 16) & full != full

    code, runtime = container.exec_run(["docker", "-H", SOCKET, "info", "--format", "{{.DefaultRuntime}}"])

    assert code == 0, runtime
    assert runtime.decode().strip() == ("harness-runc" if incomplete else "runc")


def test_privileged_container_runs_inside_dind(plain_dind):
    container, _ = plain_dind
    save = subprocess.Popen(["docker", "save", "busybox:latest"], stdout=subprocess.PIPE)
    load = subprocess.run(["docker", "exec", "-i", container.name, "docker", "-H", SOCKET, "load"],
                          stdin=save.stdout, capture_output=True, text=True, timeout=120)
    save.stdout.close()
    assert save.wait(timeout=60) == 0
    assert load.returncode == 0, load.stderr

    mount = ["sh", "-c", "mkdir -p /scratch && mount -t tmpfs none /scratch && echo mounted"]
    code, output = container.exec_run(["docker", "-H", SOCKET, "run", "--rm", "--privileged", "busybox", *mount])
    unprivileged_code, _ = container.exec_run(["docker", "-H", SOCKET, "run", "--rm", "busybox", *mount])

    assert code == 0, output
    assert output.decode().strip() == "mounted"
    assert unprivileged_code != 0


def test_dind_moves_socket_and_survives_kill(resources):
    socket = "unix:///run/user-docker.sock"
    container, _ = start_dind(resources, "docker:dind", "socket-dind",
                              {"DOCKER_TLS_CERTDIR": "", "DOCKER_HOST": socket})
    wait_for_daemon(container, socket)

    # A stale pid file naming a live process (pid 1 always runs) stops dockerd from starting
    # unless the entrypoint removes it.
    container.kill()
    container.wait(timeout=30)
    assert container.put_archive("/run", _tar_with_file("docker.pid", b"1\n"))
    container.start()

    assert wait_for_daemon(container, socket).startswith("20.10.")
    code, _ = container.exec_run(["test", "-e", "/var/run/docker.sock"])
    assert code != 0


def test_dind_runs_other_commands_as_is(resources):
    code, output = resources.run("docker:dind", ["sh", "-c", "echo as-is"])

    assert code == 0, output
    assert output == "as-is\n"


@pytest.mark.parametrize("image, mounts, expected", [
    ("docker:cli", "none", "[tcp://docker:2375] [] []"),
    ("docker:cli", "certs", "[tcp://docker:2376] [1] [/certs/client]"),
    ("docker:1.12.6", "certs", "[tcp://docker:2375] [] []"),
    ("docker:cli", "socket", "[] [] []"),
])
def test_cli_chooses_docker_host(client, resources, image, mounts, expected):
    volumes = {}
    if mounts == "certs":
        certs = resources.volume("fake-certs")
        code, output = resources.run("busybox:latest", ["sh", "-c", "for f in ca cert key; do echo x > /v/$f.pem; done"],
                                     volumes={certs.name: {"bind": "/v", "mode": "rw"}})
        assert code == 0, output
        volumes[certs.name] = {"bind": "/certs/client", "mode": "ro"}
    if mounts == "socket":
        volumes["/var/run/docker.sock"] = {"bind": "/var/run/docker.sock", "mode": "rw"}

    code, output = resources.run(image, ["sh", "-c", 'echo "[$DOCKER_HOST] [$DOCKER_TLS_VERIFY] [$DOCKER_CERT_PATH]"'],
                                 volumes=volumes)

    assert code == 0, output
    assert output.strip() == expected


def test_cli_with_socket_reaches_engine(client, resources):
    # With the socket mounted the entrypoint leaves DOCKER_HOST unset, so the CLI uses the socket.
    code, output = resources.run("docker:cli", ["docker", "version", "--format", "{{.Server.Version}}"],
                                 volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}})

    assert code == 0, output
    assert output.strip() == client.version()["Version"]


def test_cli_keeps_explicit_docker_host(resources):
    code, output = resources.run("docker:cli", ["sh", "-c", 'echo "$DOCKER_HOST"'],
                                 environment={"DOCKER_HOST": "tcp://dind-service:2375"})

    assert code == 0, output
    assert output.strip() == "tcp://dind-service:2375"


def test_cli_passes_flags_to_docker(resources):
    code, output = resources.run("docker:cli", ["--version"])

    assert code == 0, output
    assert output.startswith("Docker version 20.10.")


def test_httpd_answers_on_port_80(resources):
    network = resources.network("httpd")
    container = resources.start("httpd:latest", role="httpd", network=network.name)
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]

    body = ""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not body:
        try:
            with urllib.request.urlopen(f"http://{address}:80/", timeout=2) as response:
                body = response.read().decode()
        except OSError:
            time.sleep(0.5)

    assert "It works!" in body
    assert container.attrs["Config"]["ExposedPorts"] == {"80/tcp": {}}


def test_httpd_stops_on_sigterm(resources):
    container = resources.start("httpd:latest", role="httpd-stop")
    time.sleep(0.5)

    started = time.monotonic()
    container.stop(timeout=10)

    assert time.monotonic() - started < 5


@pytest.mark.parametrize("image", ["busybox:latest", "busybox", "alpine:3", "alpine:latest", "alpine"])
def test_small_images_run_shell(resources, image):
    code, output = resources.run(image, ["sh", "-c", "true"])

    assert code == 0, output


def test_alpine_says_it_is_a_stand_in(resources):
    code, output = resources.run("alpine:3", ["sh", "-c", "cat /etc/alpine-release /etc/os-release; apk add curl 2>&1"])

    assert code == 1
    assert output.splitlines()[0] == "3.21.0"
    assert "stand-in" in output
    assert "apk: not available" in output


@pytest.mark.parametrize("image", ["node:18", "node:lts"])
def test_node_runs_script(resources, image):
    code, output = resources.run(image, ["node", "-e", "console.log(process.versions.node.split('.')[0], 6 * 7)"])

    assert code == 0, output
    assert output.strip() == "18 42"


def test_node_entrypoint_passes_flags_to_node(resources):
    code, output = resources.run("node:18", ["-e", "console.log('flag')"])

    assert code == 0, output
    assert output.strip() == "flag"
