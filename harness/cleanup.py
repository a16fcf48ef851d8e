"""Remove what harness sessions left on the engine, found only through the harness's labels.

A session is dead when the process named in its ``owner-pid`` label is gone. Nothing without the
``dind-dood-harness.managed=true`` label is ever touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from harness import labels

log = logging.getLogger(__name__)

# Wiring and sandbox directories without a container are left this long, since a session that
# is setting up a registry or sandbox writes the directory just before it creates the container.
ORPHAN_AGE_SECONDS = 60
# A temporary directory from labels.temp_prefix: harness-<kind>-<session>-<owner pid>-<random>.
_TEMP_NAME = re.compile(r"harness-(?:runner|project)-([0-9a-f]+)-(\d+)-.+")


@dataclass
class Leftovers:
    """Labelled resources found on the engine, by kind, as ``(name, session)`` pairs."""

    containers: list[tuple[str, str]] = field(default_factory=list)
    networks: list[tuple[str, str]] = field(default_factory=list)
    volumes: list[tuple[str, str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)

    def count(self) -> int:
        """Return the number of resources found."""
        return len(self.containers) + len(self.networks) + len(self.volumes) + len(self.images)


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
    """Remove labelled containers (with their anonymous volumes), then networks, volumes and images.

    Only images that carry a session label are removed, which are those a session built for
    itself, such as the benchmark's seeding images. Stand-ins and the engine probe carry none.

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

    _clean_images(client, found, session, dead_only, dry_run)
    if not dry_run:
        _remove_host_trust(found)
        _remove_sandbox_directories(found)
        _remove_session_files(client, session, dead_only, _sessions(found))
    if found.count():
        log.info("%s %d containers, %d networks, %d volumes, %d images", "found" if dry_run else "removed",
                 len(found.containers), len(found.networks), len(found.volumes), len(found.images))
    return found


def _clean_images(client: docker.DockerClient, found: Leftovers, session: str | None, dead_only: bool,
                  dry_run: bool) -> None:
    """Remove the selected session-labelled images, after the containers that could use them."""
    for summary in client.api.images(filters=labels.managed_filter()):
        image_labels = summary.get("Labels") or {}
        if labels.SESSION not in image_labels or not _selected(image_labels, session, dead_only):
            continue
        name = next((tag for tag in summary.get("RepoTags") or [] if tag != "<none>:<none>"), summary["Id"][7:19])
        found.images.append((name, image_labels[labels.SESSION]))
        if not dry_run:
            _ignore_missing(client.api.remove_image, image=summary["Id"], force=True)


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


def _sessions(found: Leftovers) -> set[str]:
    return {owner for rows in (found.containers, found.networks, found.volumes) for _, owner in rows if owner}


def _remove_session_files(client: docker.DockerClient, session: str | None, dead_only: bool,
                          removed_sessions: set[str]) -> None:
    """Remove temporary directories, registry wiring and sandbox directories of finished sessions.

    A session killed with SIGKILL, or interrupted again during its teardown, leaves files behind
    that carry no Docker label: job payloads with secrets in the temporary directory, ``certs.d``
    copies, sandbox socket directories. A temporary directory names its session and owner
    process. A wiring or sandbox directory is removed once no labelled container of its session
    or name exists and it is older than ``ORPHAN_AGE_SECONDS``, so one being set up stays. The
    dead-session sweep also keeps a wiring directory whose owner file names a running process.
    """
    from harness.registry_trust import registry_state_dir
    from harness.sandbox import sandboxes_dir

    for path in Path(tempfile.gettempdir()).glob("harness-*"):
        match = _TEMP_NAME.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        owner_session, owner_pid = match.groups()
        if session is not None:
            selected = owner_session == session
        else:
            selected = owner_pid != str(os.getpid()) and (not dead_only or not _pid_alive(owner_pid))
        if selected:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s of session %s", path, owner_session)

    containers = _managed_containers(client)
    live_sessions = {owner for _, owner in containers} | {labels.session_id()}
    live_names = {name for name, _ in containers}
    pattern = session or "*"
    orphans = [directory for directory in (registry_state_dir() / "sessions").glob(pattern)
               if directory.name not in live_sessions]
    orphans += [directory for directory in sandboxes_dir().glob(f"{labels.PREFIX}-{pattern}-*")
                if directory.name not in live_names]
    for directory in orphans:
        swept = directory.name in removed_sessions or any(f"-{owner}-" in directory.name for owner in removed_sessions)
        if dead_only and not swept and _owner_alive(directory):
            continue
        if directory.is_dir() and (swept or time.time() - directory.stat().st_mtime > ORPHAN_AGE_SECONDS):
            shutil.rmtree(directory, ignore_errors=True)
            log.info("removed %s, which no running session uses", directory)


def _owner_alive(directory: Path) -> bool:
    """Return whether the process named in a wiring directory's owner file still runs."""
    from harness.registry_container import OWNER_PID_FILE

    try:
        return _pid_alive((directory / OWNER_PID_FILE).read_text().strip())
    except OSError:
        return False


def _managed_containers(client: docker.DockerClient) -> list[tuple[str, str]]:
    """Return (name, session) of every labelled container on the engine."""
    return [((summary.get("Names") or ["/"])[0].lstrip("/"), (summary.get("Labels") or {}).get(labels.SESSION, ""))
            for summary in client.api.containers(all=True, filters=labels.managed_filter())]


def _ignore_missing(remove, **kwargs) -> None:
    try:
        remove(**kwargs)
    except docker.errors.NotFound:
        log.debug("already gone")
    except docker.errors.APIError as error:
        log.warning("could not remove a labelled resource: %s", error.explanation or error)
