"""The Docker engine version inside each ``docker`` image, for ``harness images list``.

The version is read by running the image's own binaries (``dockerd --version``, else
``docker --version``) once per image id. The versions are cached in the state directory, so a
listing runs containers only for images it has not seen before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re

import docker.errors
import requests.exceptions

from harness import labels
from harness.engine import state_dir
from harness.image_catalog import split_tag

log = logging.getLogger(__name__)

# Only images of the docker repository carry an engine; busybox or node have none to report.
ENGINE_REPOSITORIES = ("docker",)
PROBE = "dockerd --version 2>/dev/null || docker --version"
_VERSION = re.compile(r"version\s+([0-9][^\s,]*)")


def parse_version(output: str) -> str:
    """Return ``26.1.5+dfsg1`` of ``Docker version 26.1.5+dfsg1, build a72d7cd``; empty if none."""
    match = _VERSION.search(output)
    return match.group(1) if match else ""


class EngineVersions:
    """Engine versions by image id, probed on first use and kept in ``engine-versions.json``."""

    def __init__(self, client) -> None:
        self._client = client
        self._path = state_dir() / "images" / "engine-versions.json"
        self._cache = self._load()
        self._changed = False

    def _load(self) -> dict[str, str]:
        try:
            return dict(json.loads(self._path.read_text()))
        except (OSError, ValueError):
            return {}

    def of(self, tag: str, image_id: str) -> str:
        """Return the engine version inside ``image_id`` (tagged ``tag``); empty for other images."""
        if split_tag(tag)[0] not in ENGINE_REPOSITORIES:
            return ""
        if image_id not in self._cache:
            self._cache[image_id] = self._probe(image_id)
            self._changed = True
        return self._cache[image_id]

    def _probe(self, image_id: str) -> str:
        # Removed by hand with its volumes: dind images declare VOLUME /var/lib/docker, and
        # run(remove=True) would leave one anonymous volume per probe on the engine.
        container = None
        try:
            container = self._client.containers.create(
                image_id, ["-c", PROBE], entrypoint="sh", network_mode="none",
                labels=labels.managed_labels("engine-version-probe"))
            container.start()
            container.wait(timeout=60)
            output = container.logs(stdout=True, stderr=False)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            log.warning("cannot read the engine version of %s: %s", image_id[:19], error)
            return ""
        finally:
            if container is not None:
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True, v=True)
        return parse_version(output.decode(errors="replace"))

    def save(self) -> None:
        """Write the cache back when a probe added to it."""
        if not self._changed:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_text(json.dumps(self._cache, indent=1, sort_keys=True))
