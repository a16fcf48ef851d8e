"""The ``volumes`` of a job: cache volumes, host binds and the builds volume, as the runner makes them.

Every bind collected here is given to the build container, the predefined container and every
service container, which is why a host ``docker.sock`` bind also reaches a dind service.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath

import docker.errors

from harness.errors import InputError
from harness.executor import naming
from harness.executor.runner_labels import Labeler

log = logging.getLogger(__name__)

CONFIG_KEY = "runners.docker.volumes"
CACHE_INIT_PATH = "/gitlab-runner-cache-init"


class DuplicateVolumeError(InputError):
    """Two ``volumes`` entries name the same container path."""

    def __init__(self, file: str, destination: str) -> None:
        self.destination = destination
        super().__init__(file, CONFIG_KEY, f'volume for container path "{destination}" is already defined',
                         "remove one of the two entries")


@dataclasses.dataclass(frozen=True)
class VolumeSettings:
    """What decides the volume names of one job.

    Attributes:
        reusable_name: Name base of reusable cache volumes (hash-based since 18.4).
        prefix: The per-job random container prefix, name base of temporary volumes.
        project_dir: Directory relative destinations are joined to.
        protected: The ref is protected, so reusable names get ``-protected``.
        cache_dir: ``runners.docker.cache_dir``; cache volumes become host binds under it.
        config_file: Shown in error messages.
    """

    reusable_name: str
    prefix: str
    project_dir: str
    helper_image: str
    disable_cache: bool = False
    protected: bool = False
    cache_dir: str = ""
    config_file: str = "config.toml"


def parse_volume(entry: str) -> tuple[str | None, str, str]:
    """Split a ``docker -v`` style entry into ``(host source or None, destination, mode)``."""
    parts = entry.split(":")
    if len(parts) == 1:
        return None, parts[0], ""
    mode = ":".join(parts[2:])
    return parts[0], parts[1], mode


def is_host_mounted(path: str, entries: list[str]) -> bool:
    """Return True when a host bind in ``entries`` covers ``path``, making the builds dir shared."""
    for entry in entries:
        source, destination, _ = parse_volume(entry)
        if source is None:
            continue
        destination = destination.rstrip("/") or "/"
        if path == destination or path.startswith(destination.rstrip("/") + "/"):
            return True
    return False


def without_path(entries: list[str], path: str) -> list[str]:
    """Return ``entries`` minus every volume mounted at ``path`` or below it."""
    kept = []
    for entry in entries:
        _, destination, _ = parse_volume(entry)
        destination = destination.rstrip("/") or "/"
        if destination != path and not destination.startswith(path.rstrip("/") + "/"):
            kept.append(entry)
    return kept


class VolumeManager:
    """Creates the volumes of one job and collects the binds every job container receives."""

    def __init__(self, client, labeler: Labeler, settings: VolumeSettings) -> None:
        self._client = client
        self._labeler = labeler
        self._settings = settings
        self._destinations: set[str] = set()
        self.binds: list[str] = []
        self.temporary: list[str] = []
        self.created: list[dict] = []

    def add(self, entry: str) -> None:
        """Add one ``volumes`` entry: a bind is kept verbatim, a bare path becomes a cache volume.

        Raises:
            DuplicateVolumeError: the container path already has a volume.
            InputError: the entry's destination is ``/``.
        """
        source, destination, _ = parse_volume(entry)
        if source is not None:
            self._claim(destination)
            self.binds.append(entry)
            return
        self.add_cache(destination)

    def add_cache(self, destination: str, reusable: bool = True) -> None:
        """Add a cache volume for ``destination``, temporary when ``disable_cache`` or not reusable."""
        if not posixpath.isabs(destination):
            destination = posixpath.join(self._settings.project_dir, destination)
        destination = posixpath.normpath(destination)
        if destination == "/":
            raise InputError(self._settings.config_file, CONFIG_KEY, 'the volume destination "/" is invalid',
                             "mount the cache at a subdirectory such as /cache")
        self._claim(destination)

        if not reusable or self._settings.disable_cache:
            name = naming.cache_volume_name(self._settings.prefix, destination, self._settings.protected)
            self._create_volume(name, destination, reusable=False)
            self.temporary.append(name)
        elif self._settings.cache_dir:
            source = naming.cache_dir_bind_source(self._settings.cache_dir, self._settings.reusable_name,
                                                  destination, self._settings.protected)
            self.binds.append(f"{source}:{destination}")
            return
        else:
            name = naming.cache_volume_name(self._settings.reusable_name, destination, self._settings.protected)
            self._create_volume(name, destination, reusable=True)
        self.binds.append(f"{name}:{destination}")

    def add_builds_volume(self, builds_dir: str, git_strategy: str) -> bool:
        """Add the builds volume: reusable for ``fetch``, temporary for ``clone`` and ``none``.

        Returns:
            False when a host bind already covers ``builds_dir`` and no volume was made.
        """
        if builds_dir in self._destinations or is_host_mounted(builds_dir, self.binds):
            return False
        self.add_cache(builds_dir, reusable=git_strategy == "fetch")
        return True

    def _claim(self, destination: str) -> None:
        if destination in self._destinations:
            raise DuplicateVolumeError(self._settings.config_file, destination)
        self._destinations.add(destination)

    def _create_volume(self, name: str, destination: str, reusable: bool) -> None:
        """Create the named volume unless it exists; a new volume gets its permissions opened."""
        try:
            self._client.api.inspect_volume(name)
            log.debug("reusing volume %s for %s", name, destination)
            self.created.append({"name": name, "destination": destination, "reusable": reusable, "new": False})
            return
        except docker.errors.NotFound:
            pass

        labels = self._labeler.labels("cache", destination=destination, protected=str(self._settings.protected).lower(),
                                      reusable=str(reusable).lower())
        self._client.api.create_volume(name=name, labels=labels)
        log.debug("created volume %s for %s", name, destination)
        self.created.append({"name": name, "destination": destination, "reusable": reusable, "new": True})
        self._open_permissions(name)

    def _open_permissions(self, name: str) -> None:
        """Run the helper's ``cache-init`` on a new volume, as the runner's permission setter does."""
        container_name = naming.permission_container_name(name)
        container = self._client.api.create_container(
            self._settings.helper_image,
            command=["gitlab-runner-helper", "cache-init", CACHE_INIT_PATH],
            name=container_name,
            labels=self._labeler.labels("cache-init"),
            host_config=self._client.api.create_host_config(binds=[f"{name}:{CACHE_INIT_PATH}"]),
        )
        try:
            self._client.api.start(container["Id"])
            status = self._client.api.wait(container["Id"], timeout=60)
            if status.get("StatusCode") != 0:
                log.warning("cache-init of volume %s exited with %s", name, status.get("StatusCode"))
        finally:
            self._client.api.remove_container(container["Id"], force=True, v=True)

    def remove_temporary(self) -> None:
        """Remove the temporary volumes; a volume already gone is skipped."""
        for name in self.temporary:
            try:
                self._client.api.remove_volume(name, force=True)
                log.debug("removed temporary volume %s", name)
            except docker.errors.NotFound:
                log.debug("temporary volume %s was already removed", name)
