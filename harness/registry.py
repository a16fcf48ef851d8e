"""The local registry that jobs push to, and the pull mirror that replaces Docker Hub.

Both run the ``registry:2`` stand-in (Debian's docker-registry, distribution 2.8) with TLS on port
443 inside the container, so image references without a port
(``registry.cn-beijing.aliyuncs.com/devopsman/app:1``) reach it. The container machinery both
share is in :mod:`harness.registry_container`, and the CA that issues their certificates is in
:mod:`harness.registry_trust`. Names are never looked up in DNS: a runner gets
``extra_hosts`` entries and a ``certs.d`` directory from :meth:`Registry.wiring`, and the host
engine gets a marked ``/etc/hosts`` block and ``/etc/docker/certs.d`` entries from
:meth:`Registry.install_host_trust`.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import secrets
import threading
from collections.abc import Iterable, Mapping
from typing import Self

import docker
import docker.errors

from harness.errors import RegistryError
from harness.registry_container import REGISTRY_IMAGE, RegistryContainer, claim_session_dir, session_dir
from harness.registry_trust import HostTrust, Wiring, is_ip_address

__all__ = ["DEFAULT_MIRROR_IMAGES", "MIRROR_HOSTNAME", "REGISTRY_IMAGE", "Mirror", "Registry", "Wiring",
           "hub_repository", "session_dir", "validate_hostname"]

log = logging.getLogger(__name__)

MIRROR_HOSTNAME = "harness-mirror"
# Names dockerd 20.10 contacts for Docker Hub. Wiring maps them to the mirror too, so a daemon whose
# mirror setting is lost sends nothing to the real Docker Hub. Its pull then fails with "x509:
# certificate signed by unknown authority", because dockerd checks Docker Hub against the system
# CAs only and ignores certs.d for it.
DOCKER_HUB_HOSTS = ("registry-1.docker.io", "index.docker.io", "auth.docker.io", "docker.io")
DEFAULT_MIRROR_IMAGES = ("busybox:latest", "node:18", "alpine:3", "httpd:latest")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def validate_hostname(name: str) -> str:
    """Return ``name`` lowercased, or raise RegistryError when it has a port or is no DNS name."""
    lowered = name.lower()
    if ":" in lowered:
        raise RegistryError(f"invalid registry hostname {name!r}: the registry listens on port 443, "
                            "so give the name without a port")
    if lowered == "localhost" or is_ip_address(lowered) or not _HOSTNAME.match(lowered):
        raise RegistryError(f"invalid registry hostname {name!r}; use a DNS name such as registry.example.com")
    return lowered


class Registry(RegistryContainer):
    """A push and pull registry served under any hostnames a scenario names, with htpasswd auth.

    Credentials are random per instance unless set with :meth:`with_auth`::

        with Registry(client).with_hostnames(["registry.cn-beijing.aliyuncs.com"]) as registry:
            wiring = registry.wiring()  # extra_hosts and volumes for [runners.docker]
            registry.install_host_trust()  # only for DooD jobs, which use the host engine
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
        """Start the registry as :meth:`RegistryContainer.start` does, once a hostname is set."""
        if not self._hostnames:
            raise RegistryError("no registry hostname set; call with_hostnames([...]) before start()")
        return super().start()


class Mirror(RegistryContainer):
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
        try:
            image.tag(target, tag)
            self._push(target, tag)
        finally:
            _untag(self._client, f"{target}:{tag}")
        self.pushed[reference] = f"{repository}:{tag}"
        log.info("mirror %s: pushed %s as %s:%s", self.name, local, repository, tag)
        return f"{repository}:{tag}"

    def _after_ready(self) -> None:
        # Each file and trust is recorded before it is written, so stop() also removes it when an
        # interrupt lands in between.
        path = claim_session_dir() / f"{self.name}.daemon.json"
        self._wiring_paths.append(path)
        path.write_text(json.dumps(self.daemon_json(), indent=2) + "\n")
        trust = HostTrust(self.ip, self._authority().cert_pem, [self.ip], self.name)
        self._host_trusts.append(trust)
        trust.install()
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
    """Return the Docker Hub repository path and tag of ``reference``.

    ``busybox`` becomes ``("library/busybox", "latest")`` and ``gitlab/runner:v1`` stays
    ``("gitlab/runner", "v1")``.

    Raises:
        RegistryError: the reference names a registry host or a digest.
    """
    if "@" in reference:
        raise RegistryError(f"image {reference} is a digest reference; give it as name:tag")
    if ":" in reference.rsplit("/", 1)[-1]:
        name, _, tag = reference.rpartition(":")
    else:
        name, tag = reference, "latest"
    for hub_prefix in ("docker.io/", "index.docker.io/"):
        name = name.removeprefix(hub_prefix)
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        raise RegistryError(f"image {reference} names registry {first}, but the mirror serves only "
                            "Docker Hub images; use a Docker Hub name such as busybox:latest")
    repository = name if "/" in name else f"library/{name}"
    return repository, tag


def _untag(client: docker.DockerClient, reference: str) -> None:
    try:
        client.images.remove(reference)
    except docker.errors.ImageNotFound:
        log.debug("tag %s already removed", reference)


_mirrors: dict[str | None, Mirror] = {}
_mirrors_lock = threading.Lock()


def shared_mirror(client: docker.DockerClient, network: str | None = None,
                  references: Iterable[str] | None = None) -> Mirror:
    """Return this process's pull mirror on ``network`` with ``references`` pushed; it starts on first use.

    One mirror per network (None: the default bridge) serves every run of a session. Each call
    pushes only the references not pushed yet, so a run pays for the images it names and nothing
    else. None means every stand-in of ``DEFAULT_MIRROR_IMAGES`` that exists locally. The mirror
    is stopped at exit, or earlier by :func:`stop_shared_mirror`. It carries the session's labels,
    so `harness clean` also finds it after a crash.
    """
    # Runs in parallel threads (the matrix) must share one mirror and not push an image twice.
    with _mirrors_lock:
        mirror = _mirrors.get(network)
        if mirror is None or not _mirror_running(mirror):
            # Started empty: a push costs time in proportion to the image's bytes.
            mirror = Mirror(client).with_network(network).with_images([]).start()
            _mirrors[network] = mirror
            atexit.register(mirror.stop)

        wanted = list(references) if references is not None else [
            reference for reference in DEFAULT_MIRROR_IMAGES if _exists(client, reference)]
        for reference in wanted:
            if reference not in mirror.pushed:
                mirror.add_image(reference)
        return mirror


def stop_shared_mirror(network: str | None = None) -> None:
    """Stop the shared mirror on ``network``, if one runs; the next :func:`shared_mirror` starts a new one."""
    mirror = _mirrors.pop(network, None)
    if mirror is not None:
        mirror.stop()


def _mirror_running(mirror: Mirror) -> bool:
    try:
        mirror.container.reload()
    except docker.errors.NotFound:
        return False
    return mirror.container.status == "running"


def _exists(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True
