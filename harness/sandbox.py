"""Sandbox host engines: a disposable dockerd in a privileged container on the real engine.

A DooD job can change anything on the engine behind the socket it gets: it runs ``docker rm -f``,
starts ``--restart=always`` containers and leaves images behind. In sandbox mode that engine is
a ``docker:dind`` container started for one session. The jobs' containers, images and volumes
then exist only inside it, and removing its container and data volume removes them all.

The sandbox daemon serves a unix socket in a directory of the real host, so this process
talks to it like to any local engine. The images the run needs (runner, helper, the images its
files name) are streamed from the real engine's ``docker save`` into the sandbox's ``docker
load``. What jobs pull later goes through the session's pull mirror, which runs on the real
engine. Docker Hub's names resolve to that mirror, so nothing is pulled from outside.

Paths that the harness bind-mounts into runner and job containers (the package, temporary
checkouts, the registry wiring files) are shared into the sandbox at the same paths, so a runner
config reads the same in both host modes. Every other host path a job binds (``/builds``,
``/var/run/docker.sock``, watched directories) is the sandbox's own.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import shutil
import time
from pathlib import Path
from typing import Iterable, Self

import docker
import docker.errors
import requests

from harness import labels
from harness.engine import API_TIMEOUT_SECONDS, local_dns_address, offline_guard_enabled, state_dir
from harness.errors import EngineError

log = logging.getLogger(__name__)

SANDBOX_IMAGE = "docker:dind"
SOCKET_DIR = "/run/harness-sandbox"
# Addresses inside the sandbox must not overlap the real engine's networks, where the mirror and
# the registries run, or nested containers would route their traffic to the wrong bridge.
BRIDGE_IP = "10.213.0.1/24"
ADDRESS_POOL = {"base": "10.214.0.0/16", "size": 24}
READY_TIMEOUT_SECONDS = 60
# Chunks of the `docker save` stream that seeding passes on to the sandbox's `docker load`.
SEED_CHUNK_BYTES = 1 << 20


def sandboxes_dir() -> Path:
    """Return ``<state dir>/sandboxes``, with one directory per sandbox for its socket and certs.d."""
    return state_dir() / "sandboxes"


class SandboxEngine:
    """A Docker engine in a privileged ``docker:dind`` container, disposable with its session.

    ``start`` creates the container and a volume for its ``/var/lib/docker`` on the real engine,
    both with the session's labels. The volume lets the nested daemon use overlay2 instead of
    vfs. ``stop`` removes both with everything inside. Use it as a context manager::

        with SandboxEngine(client).with_mirror(mirror) as sandbox:
            sandbox.seed(["busybox:latest"])
            sandbox.client.containers.run("busybox", "true")
    """

    role = "sandbox"

    def __init__(self, client: docker.DockerClient, image: str = SANDBOX_IMAGE) -> None:
        self.real_client = client
        self.image = image
        self.name = f"{labels.PREFIX}-{labels.session_id()}-{self.role}-{secrets.token_hex(3)}"
        self.directory = sandboxes_dir() / self.name
        self.container = None
        self.volume = None
        self._client: docker.DockerClient | None = None
        self._shared: dict[str, bool] = {}
        self._mirror = None
        self._network: str | None = None
        self._creating = False

    def with_shared_path(self, path: str | Path, read_only: bool = False) -> Self:
        """Bind ``path`` of the real host into the sandbox at the same path."""
        self._shared[str(path)] = read_only
        return self

    def with_network(self, network: str) -> Self:
        """Attach the sandbox container to ``network`` of the real engine instead of the default bridge."""
        self._network = network
        return self

    def with_mirror(self, mirror) -> Self:
        """Pull Docker Hub images through ``mirror`` (a started :class:`harness.registry.Mirror`)."""
        self._mirror = mirror
        return self

    @property
    def mirror(self):
        """The mirror this sandbox pulls through, or None."""
        return self._mirror

    @property
    def socket_url(self) -> str:
        """The sandbox daemon's address as ``DOCKER_HOST`` takes it, on the real host."""
        return f"unix://{self.directory / 'run' / 'docker.sock'}"

    @property
    def certs_dir(self) -> Path:
        """The real-host directory the sandbox daemon reads as ``/etc/docker/certs.d``."""
        return self.directory / "certs.d"

    @property
    def hosts_file(self) -> Path:
        """The real-host file that is the sandbox's ``/etc/hosts``, which its daemon resolves with."""
        self._require_started()
        return Path(self.container.attrs["HostsPath"])

    @property
    def client(self) -> docker.DockerClient:
        """A docker-py client for the sandbox daemon."""
        self._require_started()
        return self._client

    def start(self) -> Self:
        """Create the sandbox container and wait until its daemon responds.

        Raises:
            EngineError: the image is missing, or the daemon did not respond within
                ``READY_TIMEOUT_SECONDS``; the daemon's last log lines are in the message and
                nothing is left behind.
        """
        started = time.monotonic()
        try:
            self._create()
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        log.info("sandbox engine %s ready after %.1f s (socket %s)", self.name, time.monotonic() - started,
                 self.socket_url)
        return self

    def seed(self, references: Iterable[str]) -> list[str]:
        """Copy the images the sandbox lacks from the real engine in one ``docker save`` streamed into ``docker load``.

        A sandbox starts empty, so the layers of every image it lacks have to cross. One archive
        of all of them carries a layer that several images share (the Debian base of the
        stand-ins) once. Seeding through the pull mirror instead makes ``docker push`` gzip each
        layer on the real engine before the sandbox pulls and unpacks it, which the mirror
        then stores until the session ends.

        Returns:
            The references that were loaded (those already present are skipped).

        Raises:
            EngineError: an image is missing on the real engine, or the sandbox could not load it.
        """
        self._require_started()
        # NOTE: every session loads these images again, because a sandbox's data volume goes with
        # it. That costs time in proportion to the images' bytes, such as 880 MB for a DinD job.
        missing = [reference for reference in dict.fromkeys(references) if not _has_image(self._client, reference)]
        if not missing:
            return []

        started = time.monotonic()
        self._load(missing)
        log.info("sandbox %s: loaded %s from the real engine in %.1f s", self.name, ", ".join(missing),
                 time.monotonic() - started)
        return missing

    def list_path(self, path: str) -> list[str] | None:
        """Return the file names in directory ``path`` of the sandbox, or None when it is no directory."""
        self._require_started()
        command = ["sh", "-c", f"[ -d {shlex.quote(path)} ] && ls -1A {shlex.quote(path)}"]
        exit_code, output = self.container.exec_run(command)
        if exit_code != 0:
            return None
        return sorted(output.decode(errors="replace").splitlines())

    def resolve_v4(self, name: str, files_only: bool) -> set[str]:
        """Return the IPv4 addresses ``name`` resolves to inside the sandbox, as its daemon sees them."""
        self._require_started()
        command = ["getent", *(["-s", "files"] if files_only else []), "ahostsv4", name]
        _, output = self.container.exec_run(command)
        return {line.split()[0] for line in output.decode(errors="replace").splitlines() if line.strip()}

    def remove_path(self, path: str) -> None:
        """Delete ``path`` and everything below it inside the sandbox."""
        self._require_started()
        self.container.exec_run(["rm", "-rf", "--", path])

    def stop(self) -> None:
        """Remove the sandbox container, its volume and its directory. Calling it again does nothing."""
        if self._client is not None:
            self._client.close()
            self._client = None
        # By name, because a Ctrl-C can land after the engine created the container or the volume
        # and before self.container or self.volume was assigned.
        if self._creating:
            _ignore_missing(lambda: self.real_client.api.remove_container(self.name, force=True, v=True))
            _ignore_missing(lambda: self.real_client.api.remove_volume(f"{self.name}-data", force=True))
            log.info("sandbox engine %s removed", self.name)
            self._creating = False
        self.container = None
        self.volume = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _create(self) -> None:
        if not _has_image(self.real_client, self.image):
            raise EngineError(f"image {self.image} for the sandbox engine not found on the real engine",
                              "build the stand-ins with `harness images build`")
        (self.directory / "run").mkdir(parents=True)
        self.certs_dir.mkdir()
        (self.directory / "daemon.json").write_text(json.dumps(self._daemon_settings(), indent=2) + "\n")

        sandbox_labels = labels.managed_labels(self.role)
        self._creating = True
        self.volume = self.real_client.volumes.create(f"{self.name}-data", labels=sandbox_labels)
        volumes = {
            self.volume.name: {"bind": "/var/lib/docker", "mode": "rw"},
            str(self.directory / "run"): {"bind": SOCKET_DIR, "mode": "rw"},
            str(self.certs_dir): {"bind": "/etc/docker/certs.d", "mode": "ro"},
            str(self.directory / "daemon.json"): {"bind": "/etc/docker/daemon.json", "mode": "ro"},
        }
        for path, read_only in self._shared.items():
            volumes[path] = {"bind": path, "mode": "ro" if read_only else "rw"}
        extra_hosts = {}
        if self._mirror is not None:
            self._trust_mirror()
            extra_hosts = {name: self._mirror.ip for name in self._mirror.hostnames}

        command = ["dockerd", "--host=unix:///var/run/docker.sock", f"--host=unix://{SOCKET_DIR}/docker.sock"]
        self.container = self.real_client.containers.run(
            self.image, command, name=self.name, detach=True, privileged=True, volumes=volumes,
            extra_hosts=extra_hosts, labels=sandbox_labels, hostname="sandbox", network=self._network)
        log.info("sandbox engine %s started on the real engine from %s", self.name, self.image)

    def _daemon_settings(self) -> dict:
        settings: dict = {"bip": BRIDGE_IP, "default-address-pools": [ADDRESS_POOL],
                          "storage-driver": "overlay2"}
        # The sandbox's resolv.conf names Docker's embedded DNS on 127.0.0.11, which dockerd drops
        # for containers on its bridge and replaces by 8.8.8.8 and 8.8.4.4. The real engine's
        # guard address keeps their lookups on this machine instead.
        dns = local_dns_address() if offline_guard_enabled() else None
        if dns:
            settings["dns"] = [dns]
        if self._mirror is not None:
            settings["registry-mirrors"] = [self._mirror.url]
        return settings

    def _trust_mirror(self) -> None:
        # Every harness registry's certificate comes from the one harness CA, so its PEM is the
        # trust anchor for the mirror's names.
        ca_pem = self._mirror.ca_pem
        for name in [*self._mirror.hostnames, self._mirror.ip]:
            (self.certs_dir / name).mkdir(exist_ok=True)
            (self.certs_dir / name / "ca.crt").write_bytes(ca_pem)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status != "running":
                break
            try:
                # The constructor already asks the daemon for its API version.
                client = docker.DockerClient(base_url=self.socket_url, version="auto", timeout=5)
            except (docker.errors.DockerException, OSError):
                time.sleep(0.2)
                continue
            client.api.timeout = API_TIMEOUT_SECONDS
            self._client = client
            return

        tail = self.container.logs(tail=15).decode(errors="replace").strip()
        raise EngineError(f"sandbox engine {self.name} did not respond at {self.socket_url} within "
                          f"{READY_TIMEOUT_SECONDS} s (container {self.container.status}); its log ends:\n{tail}",
                          "check that privileged containers work with `harness doctor`")

    def _load(self, references: list[str]) -> None:
        # docker-py saves one image per request, so the multi-image endpoint is called directly.
        # Saving by reference puts only those tags into the archive, as pulls of them would.
        api = self.real_client.api
        named = ", ".join(references)
        try:
            response = api._get(api._url("/images/get"), params={"names": references}, stream=True)
            api._raise_for_status(response)
            messages = list(self._client.api.load_image(response.iter_content(chunk_size=SEED_CHUNK_BYTES)))
        except docker.errors.NotFound as error:
            raise EngineError(f"an image for sandbox {self.name} was not found on the real engine "
                              f"({error.explanation or error}); the sandbox needs {named}",
                              "build the stand-ins with `harness images build`") from error
        except docker.errors.APIError as error:
            raise EngineError(f"sandbox {self.name} could not load {named} from the real engine: "
                              f"{error.explanation or error}",
                              f"check the sandbox's log with `docker logs {self.name}`") from error
        except requests.exceptions.RequestException as error:
            # Either daemon closed its end of the stream, such as a sandbox that stopped.
            raise EngineError(f"sandbox {self.name} could not load {named} from the real engine: {error}",
                              f"check the sandbox's log with `docker logs {self.name}`") from error

        errors = [str(message["error"]) for message in messages if isinstance(message, dict) and "error" in message]
        absent = [reference for reference in references if not _has_image(self._client, reference)]
        if errors or absent:
            raise EngineError(f"sandbox {self.name} could not load {named} from the real engine: "
                              f"{'; '.join(errors) or 'missing after the load: ' + ', '.join(absent)}",
                              f"check the sandbox's log with `docker logs {self.name}`")

    def _require_started(self) -> None:
        if self.container is None or self._client is None:
            raise EngineError(f"sandbox engine {self.name} is not running", "call start() first")


def _has_image(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


def _ignore_missing(remove) -> None:
    try:
        remove()
    except docker.errors.NotFound:
        pass
