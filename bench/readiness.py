"""DinD readiness: from creating a dind service container to its daemon's first successful `docker info`."""

from __future__ import annotations

import time

import docker
import docker.errors

from bench.rounds import Contender, RoundFailed
from harness import labels
from harness.engine_versions import EngineVersions
from harness.image_catalog import load_catalog

# The dind stand-ins of docker/images.toml. All run Debian's dockerd 20.10, so they differ in
# entrypoint behaviour (TLS set-up, legacy flags), not in the daemon's code.
DIND_TAGS = ("docker:dind", "docker:19.03.7-dind", "docker:1.12.6-dind")
READY_TIMEOUT = 60.0
POLL_INTERVAL = 0.05


def contenders(client: docker.DockerClient) -> dict[str, Contender]:
    """Return one contender per distinct dind image. Each round starts a fresh service and removes it."""
    return {tag: _measure(client, tag) for tag in dind_tags(client)}


def dind_tags(client: docker.DockerClient) -> list[str]:
    """Return the first tag of each distinct dind image on the engine.

    The stand-ins come first. The engine matrix's real dockerd images (``docker:20.10-dind``,
    ``docker:26.1-dind``, ``docker:28.5-dind``) join once ``harness images build dind-20 dind-26
    dind-28`` has built them. Only they compare daemon versions.
    A tag that names the same image as an earlier one is left out, because it would time the
    same daemon twice.
    """
    engine_tags = [recipe.tags[0] for recipe in load_catalog().values()
                   if recipe.on_demand and recipe.tags[0].endswith("-dind")]
    first_tag: dict[str, str] = {}
    for tag in [*DIND_TAGS, *engine_tags]:
        try:
            image_id = client.images.get(tag).id
        except docker.errors.ImageNotFound:
            if tag in DIND_TAGS:
                raise
            continue
        first_tag.setdefault(image_id, tag)
    return list(first_tag.values())


def _measure(client: docker.DockerClient, tag: str) -> Contender:
    def one_round(round_index: int) -> float:
        started = time.monotonic()
        # Plain TCP on 2375 for every tag, so TLS certificate generation is not part of the number.
        container = client.containers.run(tag, detach=True, privileged=True, environment={"DOCKER_TLS_CERTDIR": ""},
                                          labels=labels.managed_labels("bench-readiness"))
        try:
            return wait_for_info(client, container, started, tag)
        finally:
            container.remove(force=True, v=True)

    return one_round


def wait_for_info(client: docker.DockerClient, container, started: float, tag: str) -> float:
    """Poll the service's daemon over its bridge address until `docker info` succeeds."""
    address = None
    while time.monotonic() - started < READY_TIMEOUT:
        if address is None:
            container.reload()
            address = container.attrs["NetworkSettings"]["IPAddress"] or None
        if address is not None and _info_succeeds(address):
            return time.monotonic() - started
        time.sleep(POLL_INTERVAL)
    raise RoundFailed(f"{tag}: no successful docker info within {READY_TIMEOUT:.0f} s; "
                      f"log tail: {container.logs(tail=5).decode(errors='replace').strip()}")


def _info_succeeds(address: str) -> bool:
    # The client asks for the API version when it is created, so creating it is the first probe.
    try:
        inner = docker.DockerClient(base_url=f"tcp://{address}:2375", timeout=2)
    except (docker.errors.DockerException, OSError):
        return False
    try:
        inner.info()
    except (docker.errors.DockerException, OSError):
        return False
    finally:
        inner.close()
    return True


def daemon_versions(client: docker.DockerClient) -> dict[str, str]:
    """Return the engine version inside each dind tag, as `harness images list` shows it."""
    probe = EngineVersions(client)
    versions = {tag: probe.of(tag, client.images.get(tag).id) for tag in dind_tags(client)}
    probe.save()
    return versions
