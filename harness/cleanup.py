"""Remove what harness sessions left on the engine, found only through the harness's labels.

A session is dead when the process named in its ``owner-pid`` label is gone. Nothing without the
``dind-dood-harness.managed=true`` label is ever touched.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field

import docker
import docker.errors

from harness import labels

log = logging.getLogger(__name__)


@dataclass
class Leftovers:
    """Labelled resources found on the engine, by kind, as ``(name, session)`` pairs."""

    containers: list[tuple[str, str]] = field(default_factory=list)
    networks: list[tuple[str, str]] = field(default_factory=list)
    volumes: list[tuple[str, str]] = field(default_factory=list)

    def count(self) -> int:
        """Return the number of resources found."""
        return len(self.containers) + len(self.networks) + len(self.volumes)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _selected(resource_labels: dict[str, str], session: str | None, dead_only: bool) -> bool:
    if session is not None:
        return resource_labels.get(labels.SESSION) == session
    if dead_only:
        return not _pid_alive(resource_labels.get(labels.OWNER_PID, ""))
    return True


def clean(client: docker.DockerClient, session: str | None = None, dead_only: bool = False,
          dry_run: bool = False) -> Leftovers:
    """Remove labelled containers (with their anonymous volumes), then networks, then volumes.

    Args:
        client: the engine to clean.
        session: only this session's resources; None for every session.
        dead_only: with no session given, only resources whose owner process is gone.
        dry_run: list what would be removed and remove nothing.

    Returns:
        What was found (and, unless ``dry_run``, removed).
    """
    found = Leftovers()
    selector = labels.managed_filter()

    # The list endpoint's summaries carry names and labels, so no per-container inspection can
    # fail on a container that another session removes in the meantime.
    for summary in client.api.containers(all=True, filters=selector):
        container_labels = summary.get("Labels") or {}
        if _selected(container_labels, session, dead_only):
            name = (summary.get("Names") or [summary["Id"][:12]])[0].lstrip("/")
            found.containers.append((name, container_labels.get(labels.SESSION, "")))
            if not dry_run:
                _ignore_missing(client.api.remove_container, container=summary["Id"], force=True, v=True)

    for network in client.networks.list(filters=selector):
        if _selected(network.attrs.get("Labels") or {}, session, dead_only):
            found.networks.append((network.name, (network.attrs.get("Labels") or {}).get(labels.SESSION, "")))
            if not dry_run:
                _ignore_missing(network.remove)

    for volume in client.volumes.list(filters=selector):
        if _selected(volume.attrs.get("Labels") or {}, session, dead_only):
            found.volumes.append((volume.name, (volume.attrs.get("Labels") or {}).get(labels.SESSION, "")))
            if not dry_run:
                _ignore_missing(volume.remove, force=True)

    if not dry_run:
        _remove_host_trust(found)
        _remove_sandbox_directories(found)
    if found.count():
        log.info("%s %d containers, %d networks, %d volumes", "found" if dry_run else "removed",
                 len(found.containers), len(found.networks), len(found.volumes))
    return found


def _remove_host_trust(found: Leftovers) -> None:
    """Remove the /etc/hosts blocks and certs.d entries of every session whose resources were removed."""
    from harness.registry_trust import remove_session_host_trust

    sessions = {session for rows in (found.containers, found.networks, found.volumes) for _, session in rows if session}
    for session in sessions:
        remove_session_host_trust(session)


def _remove_sandbox_directories(found: Leftovers) -> None:
    """Remove the socket and certs.d directories of the sandbox engines among the removed containers."""
    from harness.sandbox import sandboxes_dir

    for name, _ in found.containers:
        directory = sandboxes_dir() / name
        if directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)


def _ignore_missing(remove, **kwargs) -> None:
    try:
        remove(**kwargs)
    except docker.errors.NotFound:
        log.debug("already gone")
    except docker.errors.APIError as error:
        log.warning("could not remove a labelled resource: %s", error.explanation or error)
