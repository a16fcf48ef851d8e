"""One distribution 2.8 container with TLS on port 443: the machinery ``Registry`` and ``Mirror`` share.

The container starts first and waits for its configuration, because its TLS certificate must name
the container's IP address, which exists only once the container runs. The harness then copies in
``config.yml``, the certificate and key, and the credentials that the image's entrypoint hashes
with ``htpasswd -B`` from apache2-utils, since distribution 2.8 accepts only bcrypt entries.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import logging
import secrets
import shutil
import ssl
import string
import tarfile
import time
from pathlib import Path
from typing import Callable, Self

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
    registry_state_dir,
)

log = logging.getLogger(__name__)

REGISTRY_IMAGE = "registry:2"
CONFIG_TEMPLATE = Path(__file__).resolve().parents[1] / "docker" / "registry" / "config.yml.tmpl"
CONFIG_DIR = "/etc/docker/registry"
STORAGE_PATH = "/var/lib/docker-registry"
# A file named <registry name><suffix> in a wiring trust directory marks a registry that uses it.
OWNER_SUFFIX = ".owner"
HTPASSWD_AUTH = "auth:\n  htpasswd:\n    realm: dind-dood-harness\n    path: /etc/docker/registry/htpasswd\n"


# The file in a session's wiring directory that names the process owning the session.
OWNER_PID_FILE = "owner-pid"


def session_dir() -> Path:
    """Return the directory of this session's wiring files: ``certs.d`` and mirror ``daemon.json``."""
    return registry_state_dir() / "sessions" / labels.session_id()


def claim_session_dir() -> Path:
    """Create this session's wiring directory with a file naming its owner process; return it.

    The dead-session sweep of another session leaves a directory alone while its owner lives,
    also when the session has no container at that moment.
    """
    path = session_dir()
    path.mkdir(parents=True, exist_ok=True)
    owner = path / OWNER_PID_FILE
    if not owner.is_file():
        owner.write_text(labels.owner_pid())
    return path


def _release_session_dir() -> None:
    """Remove this session's wiring directory once no registry of the session has a file in it."""
    path = session_dir()
    with contextlib.suppress(OSError):
        (path / "certs.d").rmdir()
    if path.is_dir() and {entry.name for entry in path.iterdir()} <= {OWNER_PID_FILE}:
        (path / OWNER_PID_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.rmdir()


class RegistryContainer:
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
        # Set before the first engine call that creates something, so stop() looks for it by name.
        self._creating = False

    def with_network(self, network: str) -> Self:
        """Run the container on ``network`` instead of the default bridge."""
        self._network = network
        return self

    @property
    def storage_volume_name(self) -> str:
        """The name of the labelled volume that stores the registry's images."""
        return f"{self.name}-storage"

    @property
    def hostnames(self) -> list[str]:
        """Names the registry's certificate covers and wiring maps to its IP."""
        return list(self._hostnames)

    @property
    def ca_pem(self) -> bytes:
        """The PEM certificate of the CA that signed this registry's certificate."""
        return self._authority().cert_pem

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
        # Host trust goes first, so the host never maps a name to an address that is gone. The
        # container goes even when removing host trust fails.
        try:
            while self._host_trusts:
                self._host_trusts.pop().remove()
        finally:
            self._remove_wiring_files()
            self._remove_container()

    def _remove_wiring_files(self) -> None:
        for path in self._wiring_paths:
            if path.is_dir():
                (path / f"{self.name}{OWNER_SUFFIX}").unlink(missing_ok=True)
                if not any(path.glob(f"*{OWNER_SUFFIX}")):
                    shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self._wiring_paths.clear()
        _release_session_dir()

    def _remove_container(self) -> None:
        """Remove the container and the storage volume by name.

        By name, because a Ctrl-C can land after the engine created one of them and before
        ``self.container`` or ``self.volume`` was assigned.
        """
        if self._creating:
            if _ignore_missing(self._client.api.remove_container, self.name, force=True, v=True):
                log.info("removed %s %s", self.role, self.name)
            _ignore_missing(self._client.api.remove_volume, self.storage_volume_name, force=True)
            self._creating = False
        self.container = None
        self.volume = None
        self.ip = ""

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
                exit_code = self.container.attrs["State"]["ExitCode"]
                raise RegistryError(f"{self.name} exited with status {exit_code}")
            if time.monotonic() > deadline:
                description = f"{self.role} {self.name} (last /v2/ status: {status})"
                raise ReadinessTimeout(description, timeout, self.logs())
            time.sleep(0.2)

    def tags(self) -> dict[str, list[str]]:
        """Return every repository the registry stores, with its sorted tags, read through its API.

        Raises:
            RegistryError: the registry is not started, no longer runs, or a request failed.
        """
        self._require_running()
        # NOTE: one catalog page of up to 1000 repositories; the harness registries hold a few.
        repositories = self._get_json("/v2/_catalog?n=1000").get("repositories") or []
        return {repository: sorted(self._get_json(f"/v2/{repository}/tags/list").get("tags") or [])
                for repository in repositories}

    def wiring(self) -> Wiring:
        """Return the ``extra_hosts`` and ``volumes`` that make runner containers reach this registry.

        The bound directory is shared by every registry of this session, so wirings of a
        registry and the mirror combine with ``+`` into one ``/etc/docker/certs.d`` bind.
        """
        self._require_started()
        extra_hosts = tuple(f"{name}:{self.ip}" for name in self._hostnames)
        certs = session_dir() / "certs.d"
        return Wiring(extra_hosts, (f"{certs}:/etc/docker/certs.d:ro",))

    def install_host_trust(self, certs_root: Path = HOST_CERTS_DIR, hosts_file: Path = HOSTS_FILE,
                           resolve: Callable[[str, bool], set[str]] | None = None) -> HostTrust:
        """Make the host engine trust and resolve this registry, for DooD jobs, until stop().

        Writes ``<certs_root>/<hostname>/ca.crt`` for every hostname and the container IP, and a
        marked block mapping the hostnames to the container IP in ``hosts_file``. ``resolve``
        checks the names as the daemon reading ``hosts_file`` sees them (default: this machine).

        Raises:
            RegistryError: a trust directory exists that the harness did not create, or a name
                does not resolve to the container IP afterwards (nothing is left installed).
        """
        self._require_started()
        trust = HostTrust(self.ip, self._authority().cert_pem, [*self._hostnames, self.ip], self.name,
                          certs_root=certs_root, hosts_file=hosts_file, resolve=resolve)
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

    def _require_running(self) -> None:
        # A stopped registry's IP address is free. Another container (such as another session's
        # mirror, with the same CA) can get it and then serve the requests meant for the registry.
        self._require_started()
        try:
            self.container.reload()
        except docker.errors.NotFound as error:
            raise RegistryError(f"{self.name} was removed; its address {self.ip} may belong to "
                                "another container now") from error
        state = self.container.attrs["State"]
        if not state.get("Running"):
            raise RegistryError(f"{self.name} is not running (exit code {state.get('ExitCode')}); "
                                f"its address {self.ip} may belong to another container now")

    def _create(self) -> None:
        try:
            self._client.images.get(self._image)
        except docker.errors.ImageNotFound as error:
            raise RegistryError(f"image {self._image} not found on the engine; build the stand-ins "
                                "with `harness images build` first") from error
        container_labels = labels.managed_labels("registry", registry_role=self.role)
        self._creating = True
        self.volume = self._client.volumes.create(name=self.storage_volume_name, labels=container_labels)
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
        try:
            return self._get("/v2/", authorized=False)[0]
        except (OSError, http.client.HTTPException) as error:
            log.debug("%s: GET /v2/ failed: %s", self.name, error)
            return None

    def _get(self, path: str, authorized: bool = True, timeout: float = 2.0) -> tuple[int, bytes]:
        """Send ``GET path`` to the container IP, verified against the harness CA."""
        context = ssl.create_default_context(cafile=str(self.ca_cert_path))
        connection = http.client.HTTPSConnection(self.ip, 443, timeout=timeout, context=context)
        headers = {}
        if authorized and self._credentials:
            token = base64.b64encode(":".join(self._credentials).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _get_json(self, path: str) -> dict:
        try:
            status, body = self._get(path, timeout=10.0)
        except (OSError, http.client.HTTPException) as error:
            raise RegistryError(f"GET {path} on {self.role} {self.name} failed: {error}") from error
        if status != 200:
            raise RegistryError(f"GET {path} on {self.role} {self.name} returned HTTP {status}: "
                                f"{body[:200].decode(errors='replace')}")
        return json.loads(body)

    def _write_wiring_certs(self) -> None:
        certs = claim_session_dir() / "certs.d"
        ca_pem = self._authority().cert_pem
        for name in self._hostnames:
            directory = certs / name
            if directory.exists() and not self._may_share(directory, ca_pem):
                raise RegistryError(f"another registry of session {labels.session_id()} already uses "
                                    f"hostname {name}; give each registry its own hostnames")
            # Recorded before it exists, so an interrupt in between leaves nothing stop() misses.
            self._wiring_paths.append(directory)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "ca.crt").write_bytes(ca_pem)
            (directory / f"{self.name}{OWNER_SUFFIX}").touch()

    def _may_share(self, directory: Path, ca_pem: bytes) -> bool:
        """Return whether this registry may use the existing trust directory of another one.

        Mirrors on different networks (the default bridge, a sandbox's network) all serve the
        Docker Hub names, and every harness certificate comes from one CA. So they share a trust
        directory, which stays until its last owner stops. Other registries never share one.
        """
        owners = [path.name for path in directory.glob(f"*{OWNER_SUFFIX}")]
        return (self.role == "mirror" and bool(owners) and all("-mirror-" in owner for owner in owners)
                and (directory / "ca.crt").read_bytes() == ca_pem)


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


def _ignore_missing(call, *args, **kwargs) -> bool:
    """Call ``call``; return False instead of raising when the engine reports the object missing."""
    try:
        call(*args, **kwargs)
    except docker.errors.NotFound:
        log.debug("already gone: %s %s", getattr(call, "__qualname__", call), args)
        return False
    return True
