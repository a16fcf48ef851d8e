"""Waiting for services: one health-check container per service, and the runner's WARNING block."""

from __future__ import annotations

import logging
import threading
import time

import docker.errors
import requests

from harness.executor import naming
from harness.executor.containers import remove_by_name
from harness.executor.networks import NetworkManager
from harness.executor.runner_labels import Labeler
from harness.executor.services import ServiceInfo
from harness.executor.trace import ANSI_RESET, ANSI_YELLOW, Trace

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 30
MAX_PORTS = 20
MAX_SERVICE_LOG_BYTES = 64 * 1024
MAX_WARNING_SLEEP_SECONDS = 10


def effective_timeout(configured: int) -> int | None:
    """Return the wait in seconds for ``wait_for_services_timeout``: 0 means 30, negative means none."""
    if configured < 0:
        return None
    return configured or DEFAULT_TIMEOUT_SECONDS


def service_ports(inspect: dict) -> list[int]:
    """Return the ports to probe: ``HEALTHCHECK_TCP_PORT`` if set, else the exposed TCP ports (max 20)."""
    for entry in inspect["Config"].get("Env") or []:
        key, _, value = entry.partition("=")
        if key == "HEALTHCHECK_TCP_PORT" and value.strip().isdigit():
            return [int(value)]
    ports = []
    for spec in inspect["Config"].get("ExposedPorts") or {}:
        port, _, protocol = spec.partition("/")
        if protocol in ("", "tcp") and port.isdigit():
            ports.append(int(port))
    return sorted(ports)[:MAX_PORTS]


class ServiceWaiter:
    """Runs the health-check containers of a job's services in parallel."""

    def __init__(self, client, labeler: Labeler, trace: Trace, network: NetworkManager, helper_image: str,
                 legacy_links: bool = False) -> None:
        self._client = client
        self._labeler = labeler
        self._trace = trace
        self._network = network
        self._helper_image = helper_image
        self._legacy_links = legacy_links

    def wait(self, services: list[ServiceInfo], configured_timeout: int) -> None:
        """Probe every service; a failure only writes the WARNING block, the job goes on."""
        timeout = effective_timeout(configured_timeout)
        if timeout is None or not services:
            return
        self._trace.line(f"Waiting for services to be up and running (timeout {timeout} seconds)...")

        results: dict[int, tuple[str, str]] = {}
        threads = [threading.Thread(target=self._check_into, args=(info, timeout, results), daemon=True)
                   for info in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        for info in services:
            error, check_logs = results.get(info.index, ("health check did not report", ""))
            info.health_error = error
            if error:
                self._write_warning(info, error, check_logs)

    def _check_into(self, info: ServiceInfo, timeout: int, results: dict) -> None:
        started = time.monotonic()
        try:
            error, check_logs = self._check(info, timeout)
        except Exception as failure:  # noqa: BLE001 - a thread must report, never die silently
            log.debug("health check of %s raised", info.container_name, exc_info=True)
            error, check_logs = f'service "{info.container_name}" health check: {failure}', ""
        if error:
            remaining = timeout - (time.monotonic() - started)
            # The runner gives a failing service a moment to write its last log lines.
            time.sleep(min(max(remaining, 0), MAX_WARNING_SLEEP_SECONDS))
        results[info.index] = (error, check_logs)

    def _check(self, info: ServiceInfo, timeout: int) -> tuple[str, str]:
        """Run one health-check container; return ``(error or "", its logs)``."""
        inspect = self._client.api.inspect_container(info.container_id)
        info.ports = service_ports(inspect)
        if not info.ports:
            return f'service "{info.container_name}" has no exposed ports', ""

        name = naming.health_check_container_name(info.container_name)
        container_id = self._create_check(info, name)
        try:
            self._client.api.start(container_id)
            try:
                status = self._client.api.wait(container_id, timeout=timeout)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                return f'service "{name}" timeout', self._logs(container_id)
            code = status.get("StatusCode")
            if code != 0:
                return f'service "{name}" health check: exit code {code}', self._logs(container_id)
            return "", ""
        finally:
            self._client.api.remove_container(container_id, force=True, v=True)

    def _create_check(self, info: ServiceInfo, name: str) -> str:
        short_id = info.container_id[:12]
        environment = [f"WAIT_FOR_SERVICE_TCP_ADDR={short_id}"]
        environment += [f"WAIT_FOR_SERVICE_{port}_TCP_PORT={port}" for port in info.ports]
        extra_hosts, links = None, None
        if self._network.default_bridge and self._legacy_links:
            # Before 18.7 the check found the service through Docker's link variables.
            environment, links = [], [(info.container_name, "service")]
        elif self._network.default_bridge and info.ip:
            extra_hosts = [f"{short_id}:{info.ip}"]

        remove_by_name(self._client, name)
        host_config = self._client.api.create_host_config(
            network_mode=self._network.mode or None, extra_hosts=extra_hosts, links=links,
            restart_policy={"Name": "no"},
        )
        container = self._client.api.create_container(
            self._helper_image, command=["gitlab-runner-helper", "health-check"], name=name,
            environment=environment, labels=self._labeler.labels("wait", wait=info.container_id),
            host_config=host_config,
        )
        return container["Id"]

    def _logs(self, container_id: str, timestamps: bool = False, limit: int = 0) -> str:
        data = self._client.api.logs(container_id, stdout=True, stderr=True, timestamps=timestamps)
        if limit and len(data) > limit:
            data = data[-limit:]
        return data.decode("utf-8", errors="replace")

    def _write_warning(self, info: ServiceInfo, error: str, check_logs: str) -> None:
        """Write the runner's ``*** WARNING: Service ... probably didn't start properly.`` block."""
        try:
            service_logs = self._logs(info.container_id, timestamps=True, limit=MAX_SERVICE_LOG_BYTES)
        except docker.errors.APIError as failure:
            service_logs = f"cannot read the service logs: {failure}"
        block = [
            "",
            f"{ANSI_YELLOW}*** WARNING:{ANSI_RESET} Service {info.container_name} probably didn't start properly.",
            "",
            "Health check error:",
            error.strip(),
            "",
            "Health check container logs:",
            check_logs.rstrip("\n"),
            "",
            "Service container logs:",
            service_logs.rstrip("\n"),
            "",
            f"{ANSI_YELLOW}*********{ANSI_RESET}",
            "",
        ]
        self._trace.flush_pending()
        self._trace.write("\n".join(block) + "\n")
        log.warning("service %s did not pass its health check: %s", info.container_name, error)
