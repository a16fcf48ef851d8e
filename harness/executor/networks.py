"""The job's network: Docker's default bridge, a configured ``network_mode``, or a per-build network."""

from __future__ import annotations

import logging

import docker.errors

from harness.executor.runner_labels import Labeler

log = logging.getLogger(__name__)

# Modes on which Docker assigns no network aliases.
_BUILTIN_MODES = ("", "bridge", "default", "host", "none")


class NetworkManager:
    """Decides the NetworkMode of every job container and owns the per-build network.

    Attributes:
        mode: NetworkMode for containers; ``""`` is Docker's default bridge.
        created: Name of the network this manager created, if any.
    """

    def __init__(self, client, labeler: Labeler, network_mode: str, per_build: bool, name: str,
                 mtu: int = 0, enable_ipv6: bool = False) -> None:
        self._client = client
        self._labeler = labeler
        self._configured_mode = network_mode or ""
        self._per_build = per_build
        self._name = name
        self._mtu = mtu
        self._enable_ipv6 = enable_ipv6
        self.mode = self._configured_mode
        self.created: str | None = None
        self.network_id: str | None = None

    def create(self) -> str:
        """Create the per-build bridge network when FF_NETWORK_PER_BUILD applies.

        A configured ``network_mode`` always wins and no network is created, as in the runner.

        Returns:
            The NetworkMode to give every job container.
        """
        if self._configured_mode or not self._per_build:
            return self.mode

        options = {"com.docker.network.driver.mtu": str(self._mtu)} if self._mtu else None
        network = self._client.api.create_network(
            self._name, driver="bridge", options=options, enable_ipv6=self._enable_ipv6,
            labels=self._labeler.labels("network"), check_duplicate=True,
        )
        self.network_id = network["Id"]
        self.created = self._name
        self.mode = self._name
        log.debug("created network %s (%s)", self._name, self.network_id[:12])
        return self.mode

    @property
    def user_defined(self) -> bool:
        """True when containers join a user-defined network, where Docker's DNS serves aliases."""
        return self.mode not in _BUILTIN_MODES and not self.mode.startswith("container:")

    @property
    def default_bridge(self) -> bool:
        """True on Docker's default bridge, where services are found through hosts entries or links."""
        return self.mode in ("", "bridge")

    def networking_config(self, aliases: list[str]):
        """Return the docker-py ``networking_config`` giving ``aliases`` on the job network, or None."""
        if not self.user_defined:
            return None
        endpoint = self._client.api.create_endpoint_config(aliases=aliases)
        return self._client.api.create_networking_config({self.mode: endpoint})

    def remove(self) -> None:
        """Remove the per-build network after force-disconnecting whatever is still attached."""
        if not self.created:
            return
        try:
            details = self._client.api.inspect_network(self.created)
        except docker.errors.NotFound:
            log.debug("network %s was already removed", self.created)
            return

        for container_id in (details.get("Containers") or {}):
            try:
                self._client.api.disconnect_container_from_network(container_id, self.created, force=True)
            except docker.errors.NotFound:
                log.debug("container %s left network %s before cleanup", container_id[:12], self.created)
        self._client.api.remove_network(self.created)
        log.debug("removed network %s", self.created)
