"""How a dind service's daemon started: how long it took to serve its API, with or without TLS.

Read from the service container's start time and its log, while the container still exists. The
daemon logs ``API listen on`` once it serves requests. Before that, dockerd 20.10 and later log a
deprecation notice and wait 15 s when they listen on TCP without TLS and without ``--tls=false``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime

import docker.errors

_TIMESTAMP = re.compile(r'time="([^"]+)"')
API_LISTEN = "API listen on"
PLAIN_TCP_MARKS = ("DOCKER_TLS_CERTDIR is empty", "without --tlsverify")
SLOWDOWN_MARK = "intentionally being slowed down"


@dataclass(frozen=True)
class DindStart:
    """One dind daemon's start.

    Attributes:
        ready_seconds: From the container's start to the daemon's ``API listen on`` log line;
            None when the daemon never logged it.
        plain_tcp: The daemon listened on TCP without TLS.
        slowed_down: The daemon logged that it delays its start because of plain TCP.
    """

    ready_seconds: float | None
    plain_tcp: bool
    slowed_down: bool

    def to_dict(self) -> dict:
        """Return a JSON-serialisable copy."""
        return asdict(self)


def _parse_time(text: str) -> datetime:
    # Docker writes nanoseconds, which datetime cannot parse, so the fraction is cut to microseconds.
    text = text.replace("Z", "+00:00")
    match = re.match(r"(.*?\.\d{1,6})\d*(.*)", text)
    return datetime.fromisoformat("".join(match.groups()) if match else text)


def read_dind_start(client, container_id: str) -> DindStart:
    """Read the start of the dind daemon in ``container_id`` from its state and log.

    Raises:
        docker.errors.APIError: the container cannot be inspected or its log read.
    """
    started = _parse_time(client.api.inspect_container(container_id)["State"]["StartedAt"])
    logs = client.api.logs(container_id, stdout=True, stderr=True).decode(errors="replace")

    ready_seconds = None
    for line in logs.splitlines():
        if API_LISTEN not in line:
            continue
        stamp = _TIMESTAMP.search(line)
        if stamp:
            ready_seconds = round((_parse_time(stamp.group(1)) - started).total_seconds(), 1)
        break
    return DindStart(ready_seconds, any(mark in logs for mark in PLAIN_TCP_MARKS), SLOWDOWN_MARK in logs)


def try_read_dind_start(client, container_id: str) -> DindStart | None:
    """Return :func:`read_dind_start`, or None when the container is gone or unreadable."""
    try:
        return read_dind_start(client, container_id)
    except (docker.errors.APIError, ValueError):
        return None
