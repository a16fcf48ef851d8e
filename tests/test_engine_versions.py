"""The versioned dind and CLI stand-ins start for real and differ where the official images do.

Every engine line of the matrix from 19.03 on gets TLS by default (a client of the same version
reaches it on 2376 with the certificates the daemon wrote), the 1.12 line plain TCP. The plain-TCP
start's delay is asserted per version: 20.10 and later wait 15 s, the 1.12 and 19.03 lines do not. Images of lines that
`make test` does not build by default are built on demand here (about 3 minutes on a fresh machine).
"""

from __future__ import annotations

import time

import docker
import pytest

from harness import images, labels
from harness.engine_lines import ENGINE_LINES, PLAIN_TCP_DELAY_SECONDS
from harness.engine_versions import EngineVersions, parse_version
from test_docker_standins import Resources, start_dind, wait_for_daemon

pytestmark = [pytest.mark.engine, pytest.mark.images, pytest.mark.dind]

LINES = {line.name: line for line in ENGINE_LINES}
# The bookworm 20.10 daemon stands in for 19.03, so its version is not the line's name.
EXPECTED_VERSION = {"1.12": "20.10.24", "19.03": "20.10.24", "20.10": "20.10.24", "26.1": "26.1.5", "28.5": "28.5.2"}
SLOWDOWN_MESSAGE = "Startup is intentionally being slowed down"


@pytest.fixture(scope="module")
def client(engine_client):
    client = docker.from_env(timeout=300)
    images.ensure_images(client, names=[recipe for line in ENGINE_LINES for recipe in line.recipes])
    yield client
    client.close()


@pytest.fixture(scope="module")
def resources(client):
    created = Resources(client)
    yield created
    created.remove_all()


def test_engine_version_column(client):
    rows = {row.tag: row for row in images.list_images(client)}

    for line in ENGINE_LINES:
        for tag in (line.dind_image, line.cli_image):
            assert rows[tag].present, tag
            assert rows[tag].engine_version.startswith(EXPECTED_VERSION[line.name]), rows[tag]
    assert rows["busybox:latest"].engine_version == ""
    assert "ENGINE" in images.render_image_table(list(rows.values())).splitlines()[0]


def test_version_probe_leaves_no_volume(client):
    image = client.images.get(LINES["20.10"].dind_image)
    since = int(time.time()) - 1

    version = EngineVersions(client)._probe(image.id)

    until = int(time.time()) + 1
    assert version.startswith(EXPECTED_VERSION["20.10"])
    probes = {event["id"] for event in client.events(
        since=since, until=until, decode=True,
        filters={"type": "container", "event": "create", "label": [f"{labels.SESSION}={labels.session_id()}",
                                                                  f"{labels.TYPE}=engine-version-probe"]})}
    assert probes, "no probe container was created"
    mounted = {event["Actor"]["ID"] for event in client.events(
        since=since, until=until, decode=True, filters={"type": "volume", "event": "mount"})
        if event["Actor"]["Attributes"].get("container") in probes}
    # Catches a probe removed without its volumes: the dind image declares VOLUME /var/lib/docker,
    # so each probe would leave an anonymous volume behind.
    assert mounted, "the probe mounted no volume, so this test would prove nothing"
    assert [name for name in mounted if name in {volume.name for volume in client.volumes.list()}] == []


def test_parse_version():
    assert parse_version("Docker version 26.1.5+dfsg1, build a72d7cd\n") == "26.1.5+dfsg1"
    assert parse_version("sh: docker: not found") == ""


@pytest.mark.parametrize("name", [line.name for line in ENGINE_LINES if line.tls_default])
def test_tls_is_the_default(resources, name):
    line = LINES[name]
    certs = resources.volume(f"certs-{line.slug}")
    dind, network = start_dind(resources, line.dind_image, f"tls-{line.slug}", {},
                               volumes={certs.name: {"bind": "/certs/client", "mode": "rw"}})
    assert wait_for_daemon(dind).startswith(EXPECTED_VERSION[name])

    # The client image's entrypoint finds the certificates and picks tcp://docker:2376 by itself.
    client_volumes = {certs.name: {"bind": "/certs/client", "mode": "ro"}}
    code, output = resources.run(line.cli_image, ["docker", "version", "--format", "{{.Server.Version}}"],
                                 network=network.name, volumes=client_volumes)
    assert code == 0, output
    assert output.strip().startswith(EXPECTED_VERSION[name])

    code, output = resources.run(line.cli_image, ["sh", "-c", "echo $DOCKER_HOST; docker -H tcp://docker:2375 info"],
                                 network=network.name, volumes=client_volumes)
    assert output.splitlines()[0] == "tcp://docker:2376"
    assert code != 0, "a TLS daemon must not serve plain TCP on 2375"


@pytest.mark.parametrize("name", list(LINES))
def test_plain_tcp_start(resources, name):
    line = LINES[name]
    started = time.monotonic()
    # A line without TLS by default must listen on plain TCP without being told to.
    environment = {"DOCKER_TLS_CERTDIR": ""} if line.tls_default else {}
    dind, _ = start_dind(resources, line.dind_image, f"plain-{line.slug}", environment)
    # Creating the network, volume and container takes seconds when other workers load the
    # machine, so the upper bound is measured from the running container.
    running = time.monotonic()
    wait_for_daemon(dind, socket="tcp://127.0.0.1:2375", timeout=90)
    ready = time.monotonic()
    logs = dind.logs().decode()

    if line.plain_tcp_delayed:
        assert SLOWDOWN_MESSAGE in logs
        assert ready - started >= PLAIN_TCP_DELAY_SECONDS, f"{line.dind_image} was ready after {ready - started:.1f} s"
    else:
        assert SLOWDOWN_MESSAGE not in logs
        assert ready - running < PLAIN_TCP_DELAY_SECONDS, f"{line.dind_image} took {ready - running:.1f} s"
