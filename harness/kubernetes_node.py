"""The node side of a pod: hostPath checks as the kubelet makes them, and the Docker socket probe.

A Kubernetes node that runs containerd or CRI-O has no ``/var/run/docker.sock``, so a DooD pod
that mounts it gets an empty directory or a socket that speaks no Docker API. The probe here
sends ``GET /_ping`` to the socket a pod would use and reports plainly what it found.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from harness.errors import InputError
from harness.kubernetes_spec import PodSpec, Volume
from harness.placement import HOST, Snapshot, snapshot_engine

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


def prepare_host_path(volume: Volume, source: str, index: int) -> Path | None:
    """Check a hostPath volume as the kubelet does before it starts the pod.

    Creates the directory or empty file for the ``...OrCreate`` types.

    Returns:
        The topmost path this call created (the caller removes it with the pod), else None. The
        kubelet leaves created paths on the node; the harness removes them so runs leave no trace.

    Raises:
        InputError: the path does not have the declared type.
    """
    path = Path(volume.path)
    key = f"spec.volumes[{index}].hostPath"
    if volume.path_type == "DirectoryOrCreate" and not path.exists():
        topmost = path
        while not topmost.parent.exists():
            topmost = topmost.parent
        path.mkdir(parents=True)
        return topmost
    if volume.path_type == "FileOrCreate" and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return path
    checks = {"Directory": path.is_dir, "File": path.is_file, "Socket": lambda: _is_socket(path)}
    check = checks.get(volume.path_type)
    if check and not check():
        raise InputError(source, key, f"hostPath type check failed: {path} is not a {volume.path_type.lower()}",
                         "point the volume at an existing path of that type on the node, or drop 'type'")
    if not volume.path_type and not path.exists():
        # Docker, like the kubelet for type "", creates a missing source directory as root.
        log.debug("hostPath %s does not exist; the engine creates it as an empty directory", path)
    return None


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


def probe_pod_sockets(spec: PodSpec) -> list[SocketProbe]:
    """Probe every node socket the pod's containers would use as ``/var/run/docker.sock``."""
    probes = []
    for container, host_path in docker_socket_paths(spec):
        ok, reason = probe_docker_socket(host_path)
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
