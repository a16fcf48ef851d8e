"""Cleanup after a job, in the runner's order: containers in parallel, temporary volumes, network."""

from __future__ import annotations

import logging
import threading

import docker.errors

log = logging.getLogger(__name__)


def remove_container(client, container_id: str, remove_volumes: bool) -> None:
    """Disconnect a container from every network, then force-remove it with its anonymous volumes."""
    try:
        networks = client.api.inspect_container(container_id)["NetworkSettings"].get("Networks") or {}
    except docker.errors.NotFound:
        log.debug("container %s was already removed", container_id[:12])
        return

    for network in networks:
        try:
            client.api.disconnect_container_from_network(container_id, network, force=True)
        except docker.errors.APIError as error:
            log.debug("disconnecting %s from %s failed: %s", container_id[:12], network, error)
    try:
        client.api.remove_container(container_id, force=True, v=remove_volumes)
        log.debug("removed container %s", container_id[:12])
    except docker.errors.NotFound:
        log.debug("container %s was already removed", container_id[:12])


def remove_containers(client, container_ids: list[str], remove_volumes: bool) -> list[str]:
    """Remove containers in parallel; return the error messages of removals that failed."""
    errors: list[str] = []

    def remove(container_id: str) -> None:
        try:
            remove_container(client, container_id, remove_volumes)
        except docker.errors.APIError as error:
            log.warning("removing container %s failed: %s", container_id[:12], error)
            errors.append(f"{container_id[:12]}: {error}")

    threads = [threading.Thread(target=remove, args=(container_id,)) for container_id in container_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
