"""Service containers: aliases, creation, start, and how build containers find them afterwards."""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import time
from collections.abc import Iterable, Mapping

import docker.errors

from harness.executor import naming
from harness.executor.containers import remove_by_name
from harness.executor.jobvars import JobVariables, Variable
from harness.executor.networks import NetworkManager
from harness.executor.pull import ImagePuller
from harness.executor.runner_labels import Labeler
from harness.executor.trace import Trace
from harness.errors import HarnessError

log = logging.getLogger(__name__)

MIN_START_WAIT_SECONDS = 30
# Log lines of an exited service that the job trace shows.
SERVICE_LOG_TAIL = 5


@dataclasses.dataclass(frozen=True)
class ServiceDefinition:
    """One entry of ``[[runners.docker.services]]`` or of the payload's ``services``."""

    name: str
    alias: str = ""
    entrypoint: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    variables: tuple[Variable, ...] = ()

    @classmethod
    def from_mapping(cls, entry: Mapping) -> ServiceDefinition:
        """Build a definition from a payload or config mapping (``name``, ``alias``, ...)."""
        return cls(
            name=str(entry["name"]),
            alias=str(entry.get("alias") or ""),
            entrypoint=tuple(entry.get("entrypoint") or ()),
            command=tuple(entry.get("command") or ()),
            variables=_service_variables(entry),
        )


def _service_variables(entry: Mapping) -> tuple[Variable, ...]:
    """Return a service's own variables: payload ``variables`` or config ``environment`` entries."""
    variables = [Variable.from_payload({"public": True, **item}) for item in entry.get("variables") or ()]
    for item in entry.get("environment") or ():
        key, _, value = str(item).partition("=")
        variables.append(Variable(key, value, public=True))
    return tuple(variables)


@dataclasses.dataclass
class ServiceInfo:
    """A service container the job created, with what the placement checks need to find it."""

    name: str
    image: str
    index: int
    aliases: list[str]
    container_name: str
    container_id: str = ""
    ip: str = ""
    ports: list[int] = dataclasses.field(default_factory=list)
    health_error: str = ""

    def to_dict(self) -> dict:
        """Return the service as plain JSON data."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ServiceExit:
    """A service container that stopped while its job ran: a killed dind daemon, for example."""

    info: ServiceInfo
    exit_code: int | None
    log_tail: str

    def describe(self) -> str:
        """Return one line naming the service, its alias, exit code and last log line."""
        alias = f" (alias {self.info.aliases[0]})" if self.info.aliases else ""
        code = "" if self.exit_code is None else f" with exit code {self.exit_code}"
        last_line = self.log_tail.splitlines()[-1]
        return f"service {self.info.name}{alias} exited during the job{code}; its last log line: {last_line}"


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """Runner settings that shape service containers."""

    privileged: bool
    allowed_privileged_services: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    wait_timeout: int = 0


def image_matches(image: str, patterns: Iterable[str]) -> bool:
    """Return True when ``patterns`` is empty or one glob matches ``image``."""
    patterns = list(patterns)
    return not patterns or any(fnmatch.fnmatchcase(image, pattern) for pattern in patterns)


def assign_aliases(definitions: list[ServiceDefinition], trace: Trace) -> list[tuple[int, ServiceDefinition, list[str]]]:
    """Give each service the aliases no earlier service took; drop services left with none.

    Returns:
        ``(index, definition, aliases)`` for every service that will get a container; ``index``
        is the position in the combined list and becomes part of the container name.
    """
    taken: set[str] = set()
    planned = []
    for index, definition in enumerate(definitions):
        aliases = []
        for alias in naming.service_aliases(definition.name, definition.alias):
            if alias in taken:
                trace.warning(f'Skipping alias "{alias}" for service "{definition.name}" (services[{index}]): '
                              "alias is already in use by another service.")
                continue
            taken.add(alias)
            aliases.append(alias)
        if aliases:
            planned.append((index, definition, aliases))
        else:
            log.info("service %s (services[%d]) has no free alias and is not created", definition.name, index)
    return planned


class ServiceManager:
    """Creates and starts the service containers of one job."""

    def __init__(self, client, labeler: Labeler, trace: Trace, puller: ImagePuller, network: NetworkManager,
                 settings: ServiceSettings, prefix: str) -> None:
        self._client = client
        self._labeler = labeler
        self._trace = trace
        self._puller = puller
        self._network = network
        self._settings = settings
        self._prefix = prefix
        self.services: list[ServiceInfo] = []

    def start_all(self, definitions: list[ServiceDefinition], variables: JobVariables, binds: list[str]) -> list[ServiceInfo]:
        """Create and start every service container, then record their IP addresses.

        Containers are appended to ``services`` as soon as they exist, so cleanup removes them
        even when a later service fails.
        """
        # NOTE: CI_DEBUG_SERVICES (streaming service logs into the trace) is not implemented.
        for index, definition, aliases in assign_aliases(definitions, self._trace):
            info = self._create(index, definition, aliases, variables, binds)
            self._start(info)
        for info in self.services:
            info.ip = self._address(info.container_id)
        return self.services

    def _create(self, index: int, definition: ServiceDefinition, aliases: list[str],
                variables: JobVariables, binds: list[str]) -> ServiceInfo:
        parsed = naming.split_name_and_version(definition.name)
        self._trace.line(f"Starting service {parsed.image} ...")
        self._puller.ensure(parsed.image)

        name = naming.service_container_name(self._prefix, parsed.slug, index)
        remove_by_name(self._client, name)
        environment = self._environment(definition, variables)
        privileged = self._settings.privileged and image_matches(parsed.image, self._settings.allowed_privileged_services)
        host_config = self._client.api.create_host_config(
            binds=binds, privileged=privileged, network_mode=self._network.mode or None,
            extra_hosts=list(self._settings.extra_hosts) or None, dns=list(self._settings.dns) or None,
            restart_policy={"Name": "no"},
        )
        container = self._client.api.create_container(
            parsed.image,
            command=list(definition.command) or None,
            entrypoint=list(definition.entrypoint) or None,
            name=name,
            environment=environment,
            labels=self._labeler.labels("service", service=parsed.service, service_version=parsed.version),
            host_config=host_config,
            networking_config=self._network.networking_config(aliases),
        )
        info = ServiceInfo(definition.name, parsed.image, index, aliases, name, container["Id"])
        self.services.append(info)
        log.debug("created service container %s (%s)", name, info.container_id[:12])
        return info

    @staticmethod
    def _environment(definition: ServiceDefinition, variables: JobVariables) -> list[str]:
        """Return public-or-internal job variables plus the service's own, expanded against the job."""
        own = [dataclasses.replace(variable, value=variables.expand_value(variable.value)) if not variable.raw else variable
               for variable in definition.variables]
        combined = JobVariables([*variables.public_or_internal(), *own])
        return [f"{variable.key}={variable.value}" for variable in combined.effective()]

    def _start(self, info: ServiceInfo) -> None:
        """Start a service and poll until it has left the ``created`` state."""
        self._client.api.start(info.container_id)
        limit = max(self._settings.wait_timeout, MIN_START_WAIT_SECONDS)
        deadline = time.monotonic() + limit
        while self._client.api.inspect_container(info.container_id)["State"]["Status"] == "created":
            if time.monotonic() > deadline:
                raise HarnessError(f"service failed to start after {limit} seconds: {info.container_name}")
            time.sleep(1)

    def exited(self) -> list[ServiceExit]:
        """Return the services whose container is no longer running, with exit code and log tail."""
        exits = []
        for info in self.services:
            try:
                state = self._client.api.inspect_container(info.container_id)["State"]
            except docker.errors.NotFound:
                exits.append(ServiceExit(info, None, "(the container was removed)"))
                continue
            if state.get("Running"):
                continue
            try:
                tail = self._client.api.logs(info.container_id, tail=SERVICE_LOG_TAIL).decode(errors="replace")
            except docker.errors.APIError as error:
                tail = f"(log not readable: {error})"
            exits.append(ServiceExit(info, state.get("ExitCode"), tail.strip() or "(no log output)"))
        return exits

    def _address(self, container_id: str) -> str:
        networks = self._client.api.inspect_container(container_id)["NetworkSettings"].get("Networks") or {}
        for settings in networks.values():
            if settings.get("IPAddress"):
                return settings["IPAddress"]
        return ""

    def host_entries(self) -> list[str]:
        """Return ``<alias>:<ip>`` for every alias and short id of every service (18.7+ link emulation)."""
        entries = []
        for info in self.services:
            if not info.ip:
                continue
            for host in [*info.aliases, info.container_id[:12]]:
                entries.append(f"{host}:{info.ip}")
        return entries

    def links(self) -> list[tuple[str, str]]:
        """Return ``(container name, alias)`` Docker links to every running service (before 18.7)."""
        links = []
        for info in self.services:
            state = self._client.api.inspect_container(info.container_id)["State"]
            if not state.get("Running"):
                log.info("service %s is not running and gets no link", info.container_name)
                continue
            links.extend((info.container_name, alias) for alias in info.aliases)
        return links
