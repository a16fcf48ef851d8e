"""The local registry that jobs push to, and the pull mirror that replaces Docker Hub.

Both run the ``registry:2`` stand-in (Debian's docker-registry, distribution 2.8) with TLS on port
443 inside the container, so image references without a port
(``registry.cn-beijing.aliyuncs.com/devopsman/app:1``) reach it. Its certificate comes from the
harness CA (:mod:`harness.registry_trust`). Names are never looked up in DNS: a runner gets
``extra_hosts`` entries and a ``certs.d`` directory from :meth:`Registry.wiring`, and the host
engine gets a marked ``/etc/hosts`` block and ``/etc/docker/certs.d`` entries from
:meth:`Registry.install_host_trust`.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import re
import secrets
import shutil
import ssl
import string
import tarfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Self

import docker
import docker.errors

from harness import labels
from harness.errors import ReadinessTimeout, RegistryError
from harness.registry_trust import (
    HOST_CERTS_DIR,
    HOSTS_FILE,
    CertificateAuthority,
    HostTrust,
    Wiring,
    is_ip_address,
    registry_state_dir,
)

log = logging.getLogger(__name__)

REGISTRY_IMAGE = "registry:2"
CONFIG_TEMPLATE = Path(__file__).resolve().parents[1] / "docker" / "registry" / "config.yml.tmpl"
CONFIG_DIR = "/etc/docker/registry"
STORAGE_PATH = "/var/lib/docker-registry"
MIRROR_HOSTNAME = "harness-mirror"
# Names dockerd 20.10 contacts for Docker Hub. The mirror serves under them too, so a daemon whose
# mirror setting is lost still pulls locally and sends nothing to the real Docker Hub.
DOCKER_HUB_HOSTS = ("registry-1.docker.io", "index.docker.io", "auth.docker.io", "docker.io")
DEFAULT_MIRROR_IMAGES = ("busybox:latest", "node:18", "alpine:3", "httpd:latest")
HTPASSWD_AUTH = "auth:\n  htpasswd:\n    realm: dind-dood-harness\n    path: /etc/docker/registry/htpasswd\n"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def validate_hostname(name: str) -> str:
    """Return ``name`` lowercased, or raise RegistryError when it has a port or is no DNS name."""
    lowered = name.lower()
    if ":" in lowered:
        raise RegistryError(f"invalid registry hostname {name!r}: the registry listens on port 443, "
                            "so give the name without a port")
    if lowered == "localhost" or is_ip_address(lowered) or not _HOSTNAME.match(lowered):
        raise RegistryError(f"invalid registry hostname {name!r}; use a DNS name such as registry.example.com")
    return lowered


def session_dir() -> Path:
    """Return the directory of this session's wiring files: ``certs.d`` and mirror ``daemon.json``."""
    return registry_state_dir() / "sessions" / labels.session_id()


class _RegistryContainer:
    """One distribution 2.8 container with TLS on 443 and its storage volume."""

    role = "registry"

    def __init__(self, client: docker.DockerClient, image: str | None = None) -> None:
        self._client = client
        self._image = image or REGISTRY_IMAGE
        self._hostnames: list[str] = []
        self._credentials: tuple[str, str] | None = None
        self._network: str | None = None
        self._ca: CertificateAuthority | None = None
        self._host_trusts: list[HostTrust] = []
        self._wiring_paths: list[Path] = []
        self.container = None
        self.volume = None
        self.ip = ""
        self.name = f"{labels.PREFIX}-{labels.session_id()}-{self.role}-{secrets.token_hex(3)}"

    def with_network(self, network: str) -> Self:
        """Run the container on ``network`` instead of the default bridge."""
        self._network = network
        return self

    @property
    def hostnames(self) -> list[str]:
        """Names the registry's certificate covers and wiring maps to its IP."""
        return list(self._hostnames)

    @property
    def ca_cert_path(self) -> Path:
        """Path of the harness CA certificate that signed the registry's certificate."""
        return self._authority().cert_path

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Create and start the container, wait until it serves ``/v2/``, then prepare wiring.

        On any failure everything created so far is removed before the error propagates.

        Raises:
            RegistryError: the container could not be created or did not become ready; the
                message carries the registry's last log lines.
        """
        if self.container is not None:
            raise RegistryError(f"{self.name} is already started")
        log.info("starting %s %s (hostnames: %s)", self.role, self.name, ", ".join(self._hostnames))
        try:
            self._create()
            self.container.start()
            self.ip = self._container_ip()
            self._copy_config()
            self.wait_ready()
            self._write_wiring_certs()
            self._after_ready()
        except (docker.errors.DockerException, OSError, RegistryError, ReadinessTimeout) as error:
            # A readiness timeout already carries the log tail.
            tail = "" if isinstance(error, ReadinessTimeout) else f"\nlast log lines:\n{self.logs()}"
            self.stop()
            raise RegistryError(f"{self.role} {self.name} failed to start: {error}{tail}") from error
        except BaseException:
            self.stop()
            raise
        log.info("%s %s ready at %s", self.role, self.name, self.ip)
        return self

    def stop(self) -> None:
        """Remove host trust, wiring files, the container and its storage volume.

        Calling it again, or on a registry that never started, does nothing.
        """
        for trust in reversed(self._host_trusts):
            trust.remove()
        self._host_trusts.clear()
        for path in self._wiring_paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self._wiring_paths.clear()
        for directory in (session_dir() / "certs.d", session_dir()):
            with contextlib.suppress(OSError):
                directory.rmdir()
        if self.container is not None:
            _ignore_missing(self.container.remove, force=True, v=True)
            log.info("removed %s %s", self.role, self.name)
            self.container = None
        self.ip = ""
        if self.volume is not None:
            _ignore_missing(self.volume.remove, force=True)
            self.volume = None

    def logs(self, tail: int = 30) -> str:
        """Return the last ``tail`` lines of the registry's log, or "" before start."""
        if self.container is None:
            return ""
        try:
            return self.container.logs(tail=tail).decode(errors="replace") or "(no log output)"
        except docker.errors.DockerException as error:
            return f"(log not readable: {error})"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll ``GET https://<container ip>/v2/`` until it returns 401 (auth) or 200 (no auth).

        Only the container's own IP is contacted, verified against the harness CA.

        Raises:
            RegistryError: the container exited.
            ReadinessTimeout: no expected status within ``timeout`` seconds.
        """
        expected = 401 if self._credentials else 200
        deadline = time.monotonic() + timeout
        while True:
            status = self._probe_v2()
            if status == expected:
                return
            self.container.reload()
            if self.container.status not in ("created", "running"):
                raise RegistryError(f"{self.name} exited with status {self.container.attrs['State']['ExitCode']}")
            if time.monotonic() > deadline:
                raise ReadinessTimeout(f"{self.role} {self.name} (last /v2/ status: {status})", timeout, self.logs())
            time.sleep(0.2)

    def wiring(self) -> Wiring:
        """Return the ``extra_hosts`` and ``volumes`` that make runner containers reach this registry.

        The bound directory is shared by every registry of this session, so wirings of a
        registry and the mirror combine with ``+`` into one ``/etc/docker/certs.d`` bind.
        """
        self._require_started()
        extra_hosts = tuple(f"{name}:{self.ip}" for name in self._hostnames)
        certs = session_dir() / "certs.d"
        return Wiring(extra_hosts, (f"{certs}:/etc/docker/certs.d:ro",))

    def install_host_trust(self, certs_root: Path = HOST_CERTS_DIR, hosts_file: Path = HOSTS_FILE) -> HostTrust:
        """Make the host engine trust and resolve this registry, for DooD jobs, until stop().

        Writes ``<certs_root>/<hostname>/ca.crt`` for every hostname and the container IP, and a
        marked block mapping the hostnames to the container IP in ``hosts_file``.

        Raises:
            RegistryError: a trust directory exists that the harness did not create, or a name
                does not resolve to the container IP afterwards (nothing is left installed).
        """
        self._require_started()
        trust = HostTrust(self.ip, self._authority().cert_pem, [*self._hostnames, self.ip], self.name,
                          certs_root=certs_root, hosts_file=hosts_file)
        trust.install()
        self._host_trusts.append(trust)
        return trust

    def _after_ready(self) -> None:
        """Run role-specific steps once the registry serves; failures undo the whole start."""

    def _authority(self) -> CertificateAuthority:
        if self._ca is None:
            self._ca = CertificateAuthority()
        return self._ca

    def _require_started(self) -> None:
        if self.container is None or not self.ip:
            raise RegistryError(f"{self.name} is not started; call start() first")

    def _create(self) -> None:
        try:
            self._client.images.get(self._image)
        except docker.errors.ImageNotFound as error:
            raise RegistryError(f"image {self._image} not found on the engine; build the stand-ins "
                                "with `harness images build` first") from error
        container_labels = labels.managed_labels("registry", registry_role=self.role)
        self.volume = self._client.volumes.create(name=f"{self.name}-storage", labels=container_labels)
        self.container = self._client.containers.create(
            self._image, name=self.name, labels=container_labels, detach=True,
            volumes={self.volume.name: {"bind": STORAGE_PATH, "mode": "rw"}},
            network=self._network)

    def _container_ip(self) -> str:
        self.container.reload()
        networks = self.container.attrs["NetworkSettings"]["Networks"]
        network = networks.get(self._network or "bridge") or next(iter(networks.values()), {})
        address = network.get("IPAddress", "")
        if not address:
            raise RegistryError(f"{self.name} has no IP address on network {self._network or 'bridge'}")
        return address

    def _copy_config(self) -> None:
        certificate, key = self._authority().issue(self._hostnames, [self.ip])
        auth = HTPASSWD_AUTH if self._credentials else ""
        config = string.Template(CONFIG_TEMPLATE.read_text()).substitute(auth=auth, instance=self.name)
        files = [("tls/server.crt", certificate), ("tls/server.key", key), ("config.yml", config.encode())]
        if self._credentials:
            files.append(("credentials", f"{':'.join(self._credentials)}\n".encode()))
        files.append(("config.complete", b""))
        self.container.put_archive(CONFIG_DIR, _tar(files))

    def _probe_v2(self) -> int | None:
        context = ssl.create_default_context(cafile=str(self.ca_cert_path))
        connection = http.client.HTTPSConnection(self.ip, 443, timeout=2, context=context)
        try:
            connection.request("GET", "/v2/")
            return connection.getresponse().status
        except (OSError, http.client.HTTPException) as error:
            log.debug("%s: GET /v2/ failed: %s", self.name, error)
            return None
        finally:
            connection.close()

    def _write_wiring_certs(self) -> None:
        certs = session_dir() / "certs.d"
        for name in self._hostnames:
            directory = certs / name
            if directory.exists():
                raise RegistryError(f"another registry of session {labels.session_id()} already uses "
                                    f"hostname {name}; give each registry its own hostnames")
            directory.mkdir(parents=True)
            self._wiring_paths.append(directory)
            (directory / "ca.crt").write_bytes(self._authority().cert_pem)


class Registry(_RegistryContainer):
    """A push and pull registry served under any hostnames a scenario names, with htpasswd auth.

    Credentials are random per instance unless set with :meth:`with_auth`::

        with Registry(client).with_hostnames(["registry.cn-beijing.aliyuncs.com"]) as registry:
            runner_config.extra_hosts += registry.wiring().extra_hosts
    """

    def __init__(self, client: docker.DockerClient, image: str | None = None) -> None:
        super().__init__(client, image)
        self._credentials = ("harness", secrets.token_urlsafe(18))

    def with_hostnames(self, hostnames: list[str]) -> Self:
        """Serve under these DNS names, given without a port."""
        self._hostnames = list(dict.fromkeys(validate_hostname(name) for name in hostnames))
        return self

    def with_auth(self, username: str | None = None, password: str | None = None) -> Self:
        """Require these credentials; either left out is generated at random."""
        if username is not None and (not username or ":" in username or "\n" in username):
            raise RegistryError(f"invalid registry username {username!r}; use a non-empty name without ':'")
        if password is not None and "\n" in password:
            raise RegistryError("invalid registry password: it contains a newline; use a single-line password")
        self._credentials = (username or "harness", password or secrets.token_urlsafe(18))
        return self

    def without_auth(self) -> Self:
        """Serve without authentication, so ``/v2/`` returns 200 to anyone."""
        self._credentials = None
        return self

    @property
    def address(self) -> str:
        """The first hostname, the value ``docker login`` takes as its server."""
        return self._hostnames[0] if self._hostnames else ""

    @property
    def username(self) -> str | None:
        """User name ``docker login`` needs, or None without auth."""
        return self._credentials[0] if self._credentials else None

    @property
    def password(self) -> str | None:
        """Password ``docker login`` needs, or None without auth."""
        return self._credentials[1] if self._credentials else None

    def start(self) -> Self:
        """Start the registry as :meth:`_RegistryContainer.start` does, once a hostname is set."""
        if not self._hostnames:
            raise RegistryError("no registry hostname set; call with_hostnames([...]) before start()")
        return super().start()


class Mirror(_RegistryContainer):
    """A registry without auth, preloaded with stand-in images under their Docker Hub names.

    A dind daemon configured with :meth:`daemon_json` (or bound to it through :meth:`wiring`)
    pulls ``busybox`` or ``node:18`` from here. Images are pushed by the host engine, which
    trusts the mirror through ``/etc/docker/certs.d/<mirror ip>/ca.crt`` while the mirror runs.
    """

    role = "mirror"

    def __init__(self, client: docker.DockerClient, image: str | None = None) -> None:
        super().__init__(client, image)
        self._hostnames = [MIRROR_HOSTNAME, *DOCKER_HUB_HOSTS]
        self._images: dict[str, str] | None = None
        self.pushed: dict[str, str] = {}

    def with_images(self, references: Iterable[str] | Mapping[str, str]) -> Self:
        """Preload exactly these images instead of the defaults.

        Args:
            references: Docker Hub references such as ``docker:19.03.7-dind``, each pushed from
                the local image of that name, or a mapping of Docker Hub reference to the local
                image to push under it.

        Without this call the mirror preloads those of ``DEFAULT_MIRROR_IMAGES`` that exist locally.
        """
        if isinstance(references, Mapping):
            self._images = dict(references)
        else:
            self._images = {reference: reference for reference in references}
        return self

    @property
    def url(self) -> str:
        """The mirror's URL as ``registry-mirrors`` takes it."""
        return f"https://{MIRROR_HOSTNAME}"

    def daemon_json(self, **settings: object) -> dict[str, object]:
        """Return a dockerd configuration that pulls Docker Hub images through this mirror.

        dockerd rejects a setting given both here and as a flag, so a dind service using this
        file must not also get ``--registry-mirror``.
        """
        return {"registry-mirrors": [self.url], **settings}

    def wiring(self) -> Wiring:
        """Return extra_hosts and volumes, including ``daemon.json`` bound at ``/etc/docker/daemon.json``."""
        base = super().wiring()
        path = session_dir() / f"{self.name}.daemon.json"
        return base + Wiring((), (f"{path}:/etc/docker/daemon.json:ro",))

    def add_image(self, reference: str, local: str | None = None) -> str:
        """Push a local image to the mirror under the Docker Hub path of ``reference``.

        Args:
            reference: the Docker Hub reference pulls will use, such as ``busybox`` or ``node:18``.
            local: the image on the host engine to push; ``reference`` itself when None.

        Returns:
            The repository path and tag in the mirror, such as ``library/busybox:latest``.

        Raises:
            RegistryError: the image is missing locally, ``reference`` names another registry, or
                the push failed.
        """
        self._require_started()
        repository, tag = hub_repository(reference)
        local = local or reference
        try:
            image = self._client.images.get(local)
        except docker.errors.ImageNotFound as error:
            raise RegistryError(f"image {local} not found on the engine; build the stand-ins "
                                "with `harness images build` first") from error
        target = f"{self.ip}/{repository}"
        image.tag(target, tag)
        try:
            self._push(target, tag)
        finally:
            _ignore_missing(self._client.images.remove, f"{target}:{tag}")
        self.pushed[reference] = f"{repository}:{tag}"
        log.info("mirror %s: pushed %s as %s:%s", self.name, local, repository, tag)
        return f"{repository}:{tag}"

    def _after_ready(self) -> None:
        path = session_dir() / f"{self.name}.daemon.json"
        path.write_text(json.dumps(self.daemon_json(), indent=2) + "\n")
        self._wiring_paths.append(path)
        trust = HostTrust(self.ip, self._authority().cert_pem, [self.ip], self.name)
        trust.install()
        self._host_trusts.append(trust)
        for reference, local in self._preload_list().items():
            self.add_image(reference, local)

    def _preload_list(self) -> dict[str, str]:
        if self._images is not None:
            return self._images
        present = {}
        for reference in DEFAULT_MIRROR_IMAGES:
            try:
                self._client.images.get(reference)
                present[reference] = reference
            except docker.errors.ImageNotFound:
                log.info("mirror %s: %s not built, not preloaded", self.name, reference)
        return present

    def _push(self, repository: str, tag: str) -> None:
        for event in self._client.images.push(repository, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise RegistryError(f"push of {repository}:{tag} to the mirror failed: {event['error']}")


def hub_repository(reference: str) -> tuple[str, str]:
    """Return the Docker Hub repository path and tag of ``reference`` (``busybox`` -> ``library/busybox``, ``latest``).

    Raises:
        RegistryError: the reference names a registry host or a digest.
    """
    if "@" in reference:
        raise RegistryError(f"image {reference} is a digest reference; give it as name:tag")
    name, _, tag = reference.rpartition(":") if ":" in reference.rsplit("/", 1)[-1] else (reference, "", "")
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        raise RegistryError(f"image {reference} names registry {first}, but the mirror serves only "
                            "Docker Hub images; use a Docker Hub name such as busybox:latest")
    repository = name if "/" in name else f"library/{name}"
    return repository, tag or "latest"


def _tar(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _ignore_missing(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except docker.errors.NotFound:
        log.debug("already gone: %s %s", getattr(call, "__qualname__", call), args)
