"""Image pull policies: ``always``, ``if-not-present`` and ``never``, for a machine with no registry.

The harness runs offline: only a registry on this machine's loopback address can be pulled from.
Every other image must already be in the engine, built by the image forge.
"""

from __future__ import annotations

import logging

import docker.errors

from harness.errors import ImageError
from harness.executor.trace import Trace

log = logging.getLogger(__name__)

POLICIES = ("always", "if-not-present", "never")
_LOOPBACK_REGISTRIES = ("localhost", "127.0.0.1", "[::1]")


def registry_host(image: str) -> str:
    """Return the registry part of an image reference, ``docker.io`` when it names none."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def is_loopback_registry(image: str) -> bool:
    """Return True when ``image`` lives in a registry on this machine's loopback address."""
    host = registry_host(image)
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return hostname in _LOOPBACK_REGISTRIES or hostname.startswith("127.")


class ImagePuller:
    """Resolves an image to a local image id under the runner's pull policy list."""

    def __init__(self, client, policies: list[str], trace: Trace) -> None:
        unknown = [policy for policy in policies if policy not in POLICIES]
        if unknown:
            raise ImageError(f"unknown pull_policy {unknown[0]!r}; use one of {', '.join(POLICIES)}")
        self._client = client
        self._policies = policies or ["if-not-present"]
        self._trace = trace

    def ensure(self, image: str) -> dict:
        """Return ``docker image inspect`` of ``image``, pulling it only from a loopback registry.

        Raises:
            ImageError: the policy requires a pull that cannot happen offline, or the image is
                missing locally under ``never``.
        """
        local = self._inspect(image)
        for policy in self._policies:
            if policy in ("if-not-present", "never") and local is not None:
                self._trace.line(f'Using locally found image version due to "{policy}" pull policy')
                return self._announce(image, local)
            if policy in ("always", "if-not-present") and is_loopback_registry(image):
                return self._announce(image, self._pull(image))

        raise ImageError(self._explain(image, local is not None))

    def _explain(self, image: str, present: bool) -> str:
        policies = ", ".join(self._policies)
        if present:
            return (f'image "{image}" has pull_policy [{policies}], but the harness cannot pull from '
                    f"{registry_host(image)} (offline); set pull_policy = [\"if-not-present\"] in "
                    "[runners.docker] to use the local image")
        return (f'image "{image}" was not found in the engine and cannot be pulled from '
                f"{registry_host(image)} (offline, pull_policy [{policies}]); build the stand-in images "
                'with the image forge (harness images build) or push it to the local registry')

    def _inspect(self, image: str) -> dict | None:
        try:
            return self._client.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            return None

    def _pull(self, image: str) -> dict:
        self._trace.line(f"Pulling docker image {image} ...")
        repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
        try:
            self._client.api.pull(repository, tag=tag)
        except docker.errors.APIError as error:
            raise ImageError(f'pulling image "{image}" failed: {error.explanation or error}') from error
        return self._client.api.inspect_image(image)

    def _announce(self, image: str, details: dict) -> dict:
        digests = details.get("RepoDigests") or []
        digest = digests[0].split("@", 1)[1] if digests else details["Id"]
        self._trace.line(f"Using docker image {details['Id']} for {image} with digest {digest} ...")
        return details
