"""Build and predefined containers, and running one stage script in them through the attach socket.

Each container is created once with standard input open and ``StdinOnce``. Every stage attaches,
starts the container, writes the whole script to standard input, closes the write side and copies
the demultiplexed output into the trace until the stream ends, as GitLab Runner 16.0+ does.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import struct
import time

import docker.errors

from harness.executor.trace import Trace

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">BxxxL")
_POLL_SECONDS = 1.0


class StageTimeout(Exception):
    """A stage ran past its deadline and its container was killed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"execution took longer than {seconds:.0f} seconds")


@dataclasses.dataclass
class ContainerSpec:
    """Creation settings of a build or predefined container."""

    kind: str
    name: str
    image: str
    command: list[str]
    entrypoint: list[str] | None
    hostname: str
    environment: list[str]
    labels: dict[str, str]
    binds: list[str]
    privileged: bool
    network_mode: str
    networking_config: object = None
    extra_hosts: list[str] = dataclasses.field(default_factory=list)
    links: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    dns: list[str] = dataclasses.field(default_factory=list)
    user: str = ""


def remove_by_name(client, name: str) -> None:
    """Force-remove a container called ``name`` if one exists, as the runner does before reusing a name."""
    try:
        client.api.remove_container(name, force=True, v=True)
        log.debug("removed stale container %s", name)
    except docker.errors.NotFound:
        pass


def create(client, spec: ContainerSpec) -> str:
    """Create (but do not start) a job container with standard input open; return its id."""
    remove_by_name(client, spec.name)
    host_config = client.api.create_host_config(
        binds=spec.binds,
        privileged=spec.privileged,
        network_mode=spec.network_mode or None,
        extra_hosts=spec.extra_hosts or None,
        links=spec.links or None,
        dns=spec.dns or None,
        restart_policy={"Name": "no"},
    )
    container = client.api.create_container(
        spec.image,
        command=spec.command,
        entrypoint=spec.entrypoint,
        name=spec.name,
        hostname=spec.hostname,
        environment=spec.environment,
        labels=spec.labels,
        stdin_open=True,
        tty=False,
        user=spec.user or None,
        host_config=host_config,
        networking_config=spec.networking_config,
    )
    log.debug("created %s container %s (%s)", spec.kind, spec.name, container["Id"][:12])
    return container["Id"]


def _raw_socket(attached) -> socket.socket:
    """Return the plain socket behind docker-py's attach result (a SocketIO in 5.x and 7.x)."""
    return getattr(attached, "_sock", attached)


def _receive_exactly(raw: socket.socket, size: int, deadline: float | None, on_timeout) -> bytes:
    chunks = []
    while size:
        if deadline is not None and time.monotonic() > deadline:
            on_timeout()
        try:
            chunk = raw.recv(size)
        except socket.timeout:
            continue
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _copy_frames(raw: socket.socket, trace: Trace, deadline: float | None, on_timeout) -> None:
    """Copy the multiplexed stdout/stderr frames of a non-TTY attach into the trace until EOF."""
    raw.settimeout(_POLL_SECONDS)
    while True:
        header = _receive_exactly(raw, _HEADER.size, deadline, on_timeout)
        if len(header) < _HEADER.size:
            return
        _, length = _HEADER.unpack(header)
        payload = _receive_exactly(raw, length, deadline, on_timeout)
        trace.write(payload.decode("utf-8", errors="replace"))
        if len(payload) < length:
            return


def run_stage(client, container_id: str, script: str, trace: Trace, timeout: float | None = None) -> int:
    """Run ``script`` in a created or stopped container and return the container's exit code.

    Attaches to standard input and output, starts the container, sends the script, half-closes
    the connection so the shell reads end of input, and streams the output into ``trace``.

    Raises:
        StageTimeout: the stage did not finish within ``timeout`` seconds; the container was killed.
    """
    deadline = time.monotonic() + timeout if timeout else None

    def kill() -> None:
        client.api.kill(container_id)
        raise StageTimeout(timeout)

    attached = client.api.attach_socket(container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    raw = _raw_socket(attached)
    try:
        client.api.start(container_id)
        raw.sendall(script.encode())
        raw.shutdown(socket.SHUT_WR)
        _copy_frames(raw, trace, deadline, kill)
    finally:
        trace.flush_pending()
        _close(attached)

    remaining = max(deadline - time.monotonic(), 1) if deadline else None
    status = client.api.wait(container_id, timeout=remaining)
    return int(status.get("StatusCode", -1))


def _close(attached) -> None:
    """Close the attach connection; closing the HTTP response first avoids flushing a closed file."""
    response = getattr(attached, "_response", None)
    if response is not None:
        try:
            response.close()
        except (OSError, ValueError):
            log.debug("attach response was already closed")
    attached.close()
