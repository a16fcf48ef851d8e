"""The node side of a pod: the node's engine and filesystem, hostPath checks, the Docker socket probe.

A Kubernetes node that runs containerd or CRI-O has no ``/var/run/docker.sock``, so a DooD pod
that mounts it gets an empty directory or a socket that speaks no Docker API. The probe here
sends ``GET /_ping`` to the socket a pod would use and reports plainly what it found.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import docker
import docker.errors

from harness.errors import EngineError, InputError
from harness.host import HostEngine
from harness.kubernetes_spec import PodSpec, Volume
from harness.placement import HOST, Snapshot, snapshot_engine
from harness.sandbox import SandboxEngine

log = logging.getLogger(__name__)

DOCKER_SOCKET = "/var/run/docker.sock"


@dataclass(frozen=True)
class SocketProbe:
    """Result of ``GET /_ping`` on the node socket a container mounts as the Docker socket."""

    container: str
    host_path: str
    docker_api: bool
    reason: str

    def describe(self) -> str:
        """Return one line for the user, naming the container and the node path."""
        if self.docker_api:
            return f"{self.container}: node socket {self.host_path} serves the Docker API"
        return f"{self.container}: the node has no Docker API at {self.host_path}: {self.reason}"


class Node:
    """The Kubernetes node a pod runs on: a host engine, that host's filesystem and its address.

    On a ``local`` host the node is the real engine and this machine. On a ``sandbox`` host (the
    default) pod containers run in the sandbox engine, and hostPath volumes are the sandbox's own
    paths, so ``/var/run/docker.sock`` is the sandbox daemon's socket. Ports published on such a
    node are reached at the sandbox container's address on the infrastructure network.
    """

    def __init__(self, host: HostEngine) -> None:
        self.host = host

    @property
    def client(self) -> docker.DockerClient:
        """The docker-py client of the node's engine."""
        return self.host.client

    @property
    def sandbox(self) -> SandboxEngine | None:
        """The sandbox engine that is the node, or None on the real engine."""
        return self.host.sandbox

    def connect(self, timeout: float) -> docker.DockerClient:
        """Open another connection to the node's engine with request timeout ``timeout`` seconds."""
        if self.sandbox is not None:
            return docker.DockerClient(base_url=self.sandbox.socket_url, version="auto", timeout=timeout)
        return docker.from_env(timeout=timeout)

    @property
    def address(self) -> str:
        """The address at which this process reaches ports published on the node's engine."""
        if self.sandbox is None:
            return "127.0.0.1"
        self.sandbox.container.reload()
        networks = self.sandbox.container.attrs["NetworkSettings"]["Networks"]
        return networks[self.host.network]["IPAddress"]

    def path_kind(self, path: str) -> str:
        """Return what ``path`` is on the node: missing, directory, file, socket or other."""
        if self.sandbox is None:
            return _local_path_kind(Path(path))
        quoted = shlex.quote(path)
        script = (f"if [ -S {quoted} ]; then echo socket; elif [ -d {quoted} ]; then echo directory; "
                  f"elif [ -f {quoted} ]; then echo file; elif [ -e {quoted} ]; then echo other; "
                  "else echo missing; fi")
        return self._run(["sh", "-c", script]).strip()

    def make_directory(self, path: str) -> None:
        """Create directory ``path`` and its missing parents on the node."""
        if self.sandbox is None:
            Path(path).mkdir(parents=True, exist_ok=True)
        else:
            self._run(["mkdir", "-p", "--", path])

    def touch(self, path: str) -> None:
        """Create the empty file ``path`` on the node, with its missing parent directories."""
        if self.sandbox is None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch()
        else:
            self._run(["sh", "-c", 'mkdir -p -- "$(dirname -- "$1")" && touch -- "$1"', "touch", path])

    def remove_path(self, path: str) -> None:
        """Delete ``path`` on the node with everything below it."""
        if self.sandbox is not None:
            self.host.remove_path(path)
        else:
            _remove_local(Path(path))

    def probe_docker_socket(self, path: str) -> tuple[bool, str]:
        """Return whether a Docker API responds at the node's socket ``path``, and what was found."""
        kind = self.path_kind(path)
        if kind == "missing":
            return False, "nothing exists at that path (a containerd or CRI-O node has no dockerd)"
        if kind != "socket":
            described = {"directory": "a directory", "file": "a regular file"}.get(kind, "no socket")
            return False, f"it is {described}, not a socket (a containerd or CRI-O node has no dockerd)"
        if self.sandbox is None:
            return probe_docker_socket(path)

        # The sandbox image has the docker CLI but no curl, and `docker version` starts with GET /_ping.
        # NOTE: the tests reach this branch only with the sandbox's own dockerd socket; a
        # non-Docker socket inside a sandbox is not exercised.
        command = ["docker", "-H", f"unix://{path}", "version", "--format", "{{.Server.APIVersion}}"]
        exit_code, output = self.sandbox.container.exec_run(command, demux=True)
        stdout, stderr = (part.decode(errors="replace").strip() if part else "" for part in output)
        if exit_code == 0 and stdout:
            return True, f"Docker API {stdout}"
        last_line = (stderr or stdout).splitlines()[-1:] or ["no output"]
        return False, f"GET /_ping got no Docker reply ({last_line[0]}); is it containerd's or CRI-O's socket?"

    def seed(self, references: list[str]) -> None:
        """Make the images available on the node's engine: pulled through the mirror into a sandbox."""
        if self.sandbox is not None:
            self.sandbox.seed(references)

    def _run(self, command: list[str]) -> str:
        exit_code, output = self.sandbox.container.exec_run(command)
        text = output.decode(errors="replace")
        if exit_code != 0:
            raise EngineError(f"`{' '.join(command)}` failed in sandbox {self.sandbox.name}: {text.strip()}",
                              "check that the sandbox container still runs")
        return text


def local_node(client: docker.DockerClient) -> Node:
    """Return the real engine behind ``client`` as the node."""
    return Node(HostEngine.local(client))


def prepare_host_path(node: Node, volume: Volume, source: str, index: int) -> str | None:
    """Check a hostPath volume on ``node`` as the kubelet does before it starts the pod.

    Creates the directory or empty file for the ``...OrCreate`` types.

    Returns:
        The topmost path this call created (the caller removes it with the pod), else None. The
        kubelet leaves created paths on the node; the harness removes them so runs leave no trace.

    Raises:
        InputError: the path does not have the declared type.
    """
    path = volume.path
    key = f"spec.volumes[{index}].hostPath"
    kind = node.path_kind(path)
    if volume.path_type in ("DirectoryOrCreate", "FileOrCreate") and kind == "missing":
        topmost = PurePosixPath(path)
        while node.path_kind(str(topmost.parent)) == "missing":
            topmost = topmost.parent
        if volume.path_type == "DirectoryOrCreate":
            node.make_directory(path)
        else:
            node.touch(path)
        return str(topmost)
    expected = {"Directory": "directory", "File": "file", "Socket": "socket"}.get(volume.path_type)
    if expected and kind != expected:
        raise InputError(source, key, f"hostPath type check failed: {path} is not a {volume.path_type.lower()}",
                         "point the volume at an existing path of that type on the node, or drop 'type'")
    if not volume.path_type and kind == "missing":
        # Docker, like the kubelet for type "", creates a missing source directory as root.
        log.debug("hostPath %s does not exist; the engine creates it as an empty directory", path)
    return None


def _local_path_kind(path: Path) -> str:
    if _is_socket(path):
        return "socket"
    if path.is_dir():
        return "directory"
    if path.is_file():
        return "file"
    return "other" if os.path.lexists(path) else "missing"


def _remove_local(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def docker_socket_paths(spec: PodSpec) -> list[tuple[str, str]]:
    """Return ``(container, node path)`` for every container that sees ``/var/run/docker.sock`` via hostPath."""
    host_paths = {volume.name: volume.path for volume in spec.volumes if volume.kind == "hostPath"}
    found = []
    for container in spec.containers:
        for mount in container.mounts:
            if mount.volume not in host_paths:
                continue
            inside = mount.path.rstrip("/")
            if DOCKER_SOCKET == inside or DOCKER_SOCKET.startswith(inside + "/"):
                relative = DOCKER_SOCKET[len(inside):].lstrip("/")
                found.append((container.name, os.path.join(host_paths[mount.volume], relative).rstrip("/")))
    return found


def probe_docker_socket(host_path: str, timeout: float = 2.0) -> tuple[bool, str]:
    """Send ``GET /_ping`` to a unix socket on the node and return (speaks Docker API, reason)."""
    path = Path(host_path)
    if not path.exists():
        return False, "nothing exists at that path (a containerd or CRI-O node has no dockerd)"
    if not _is_socket(path):
        kind = "a directory" if path.is_dir() else "a regular file"
        return False, f"it is {kind}, not a socket (a containerd or CRI-O node has no dockerd)"

    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect(host_path)
        client.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        reply = client.recv(4096)
    except OSError as error:
        return False, f"GET /_ping failed ({error})"
    finally:
        client.close()
    status_line = reply.split(b"\r\n", 1)[0].decode(errors="replace")
    if status_line.startswith("HTTP/1.") and " 200 " in f"{status_line} " and reply.rstrip().endswith(b"OK"):
        return True, status_line
    return False, f"GET /_ping got no Docker reply (first bytes {reply[:24]!r}); is it containerd's or CRI-O's socket?"


def probe_pod_sockets(node: Node, spec: PodSpec) -> list[SocketProbe]:
    """Probe every node socket the pod's containers would use as ``/var/run/docker.sock``."""
    probes = []
    for container, host_path in docker_socket_paths(spec):
        ok, reason = node.probe_docker_socket(host_path)
        probes.append(SocketProbe(container, host_path, ok, reason))
        log.info("%s", probes[-1].describe())
    return probes


def snapshot_node(client, when: str) -> Snapshot:
    """Read the node's engine as :func:`harness.placement.snapshot_engine` does, retrying a lost race.

    Other sessions on the same engine remove containers between the list call and the inspect
    calls that snapshot_engine makes, which raises NotFound; a second read usually succeeds.
    """
    for attempt in range(5):
        try:
            return snapshot_engine(client, HOST, when)
        except docker.errors.NotFound as error:
            log.debug("node snapshot %r lost a race with a removal (attempt %d): %s", when, attempt + 1, error)
    return snapshot_engine(client, HOST, when)
