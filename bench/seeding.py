"""Image seeding into an empty nested daemon: the pull mirror against `docker save | docker load`.

Each size gets an image ``FROM scratch`` with one layer of random (incompressible) bytes. The
timed part is only the transfer into a dind daemon that is already up:

- mirror push: pushing the image from the host engine to the mirror, which a session pays once;
- mirror pull: ``docker pull`` inside the dind daemon through the mirror, paid per daemon;
- save-load: ``docker save IMAGE | docker exec -i DIND docker load``, paid per daemon.

The "base present" case adds a 1 MB layer on top of the largest image and seeds a daemon that
already contains the base: a registry pull fetches only the missing layer, while save-load streams
every layer again.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import tarfile
import time
from dataclasses import dataclass

import docker
import docker.errors

from bench import readiness
from bench.rounds import RoundFailed
from bench.stats import Series
from harness import labels
from harness.registry import Mirror

log = logging.getLogger(__name__)

IMAGE_PREFIX = "dind-dood-harness/bench-blob"
HUB_PREFIX = "bench/blob"
TOP_LAYER_MB = 1
MB = 1024 * 1024


@dataclass
class SeedingResult:
    """Series of the seeding benchmark and the bytes of each image, for fitting cost against size."""

    series: list[Series]
    megabytes: dict[str, float]


def run(client: docker.DockerClient, sizes_mb: list[int], rounds: int) -> SeedingResult:
    """Build the blob images, seed fresh dind daemons ``rounds`` times per size and method, remove it all."""
    images: dict[int, str] = {}
    top = None
    largest = max(sizes_mb)
    series: list[Series] = []
    try:
        for size in sizes_mb:
            images[size] = _build_blob(client, size)
        top = _build_top(client, images[largest])
        with Mirror(client).with_images([]) as mirror:
            hub = {size: _push(mirror, images[size], f"{HUB_PREFIX}:{size}mb", series) for size in sizes_mb}
            hub_top = _push(mirror, top, f"{HUB_PREFIX}:{largest}mb-plus-{TOP_LAYER_MB}mb", series)
            for size in sizes_mb:
                series += _compare(client, mirror, f"{size} MB", images[size], hub[size], None, rounds)
            series += _compare(client, mirror, f"{largest}+{TOP_LAYER_MB} MB, base present", top, hub_top,
                               (images[largest], hub[largest]), rounds)
    finally:
        for reference in [top, *images.values()]:
            if reference is not None:
                _remove_image(client, reference)
    megabytes = {f"{size} MB": float(size) for size in sizes_mb}
    return SeedingResult(series, megabytes)


def _compare(client, mirror: Mirror, name: str, local: str, hub: str, base: tuple[str, str] | None,
             rounds: int) -> list[Series]:
    """Time mirror pull and save-load of one image, alternating which method goes first."""
    pull, load = Series(f"seeding {name}", "mirror pull"), Series(f"seeding {name}", "save-load")
    for round_index in range(rounds):
        methods = [(pull, _mirror_pull), (load, _save_load)]
        for target, method in (methods if round_index % 2 == 0 else methods[::-1]):
            try:
                target.seconds.append(_in_fresh_daemon(client, mirror, local, hub, base, method))
            except RoundFailed as error:
                target.failures += 1
                log.warning("%s: %s failed: %s", target.benchmark, target.contender, error)
    log.info("%s: mirror pull %s s, save-load %s s", name, _seconds(pull), _seconds(load))
    return [pull, load]


def _seconds(series: Series) -> str:
    return ", ".join(f"{value:.2f}" for value in series.seconds) or "none"


def _in_fresh_daemon(client, mirror: Mirror, local: str, hub: str, base: tuple[str, str] | None, method) -> float:
    """Start an empty dind wired to the mirror, seed ``base`` untimed, then time ``method``."""
    wiring = mirror.wiring()
    container = client.containers.run(
        "docker:dind", detach=True, privileged=True, environment={"DOCKER_TLS_CERTDIR": ""},
        extra_hosts=dict(entry.split(":", 1) for entry in wiring.extra_hosts), volumes=list(wiring.volumes),
        labels=labels.managed_labels("bench-seeding"))
    try:
        readiness.wait_for_info(client, container, time.monotonic(), "docker:dind")
        if base is not None:
            method(container.name, *base)
        return method(container.name, local, hub)
    finally:
        container.remove(force=True, v=True)


def _mirror_pull(container: str, local: str, hub: str) -> float:
    return _timed(["docker", "exec", container, "docker", "pull", "-q", hub])


def _save_load(container: str, local: str, hub: str) -> float:
    _restore(local)
    return _timed(["sh", "-c", 'docker save "$1" | docker exec -i "$2" docker load -q', "save-load", local, container])


def _timed(command: list[str]) -> float:
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RoundFailed(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr.strip()[-300:]}")
    return time.monotonic() - started


def _push(mirror: Mirror, local: str, hub: str, series: list[Series]) -> str:
    _restore(local)
    started = time.monotonic()
    mirror.add_image(hub, local)
    series.append(Series(f"mirror push {hub.split(':')[-1]}", "mirror push", [time.monotonic() - started]))
    return hub


# Tag -> how to build it again. Another process's DooD teardown on the shared engine may remove
# images created during its run, so a missing image is built again before it is pushed or saved.
_BUILDERS: dict[str, object] = {}


def _restore(tag: str) -> None:
    client = docker.from_env()
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        log.warning("%s was removed from the engine by another process; building it again", tag)
        _BUILDERS[tag]()


def _build_blob(client, size_mb: int) -> str:
    """Build ``FROM scratch`` with one layer of ``size_mb`` random megabytes; return its tag."""
    tag = f"{IMAGE_PREFIX}:{size_mb}mb"
    files = {"Dockerfile": b"FROM scratch\nCOPY blob /blob\n", "blob": os.urandom(size_mb * MB)}
    _build(client, tag, files)
    _BUILDERS[tag] = lambda: _build(client, tag, files)
    return tag


def _build_top(client, base: str) -> str:
    tag = f"{base}-plus-{TOP_LAYER_MB}mb"
    files = {"Dockerfile": f"FROM {base}\nCOPY top /top\n".encode(), "top": os.urandom(TOP_LAYER_MB * MB)}
    _build(client, tag, files)
    _BUILDERS[tag] = lambda: (_restore(base), _build(client, tag, files))
    return tag


def _build(client, tag: str, files: dict[str, bytes]) -> None:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                        labels=labels.managed_labels("bench-seeding"))
    log.info("built %s", tag)


def _remove_image(client, reference: str) -> None:
    try:
        client.images.remove(reference, force=True)
    except docker.errors.ImageNotFound:
        pass
