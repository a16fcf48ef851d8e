"""The predefined and build containers of a job and the stage scripts that run in them."""

from __future__ import annotations

import logging
from pathlib import Path

from harness.executor import containers, naming, script, sources
from harness.executor.job import JobContext
from harness.executor.jobvars import JobVariables
from harness.executor.networks import NetworkManager
from harness.executor.runner_labels import Labeler
from harness.executor.services import image_matches
from harness.executor.trace import Trace

log = logging.getLogger(__name__)

HELPER_COMMAND = ["gitlab-runner-build"]


def container_environment(variables: JobVariables, temp_dir: str) -> list[str]:
    """Return ``KEY=value`` for every variable; a file variable contains its file's path."""
    environment = []
    for variable in variables.effective():
        value = f"{temp_dir}/{variable.key}" if variable.file else variable.value
        environment.append(f"{variable.key}={value}")
    return environment


def exports(variables: JobVariables, temp_dir: str) -> list[str]:
    """Return the ``export`` lines every stage script starts with."""
    triples = [(variable.key, variable.value, variable.file) for variable in variables.effective()]
    return script.export_lines(triples, temp_dir)


class JobContainers:
    """Creates the build and predefined containers lazily and runs stage scripts in them.

    Runners since 16.0 create one container of each kind and start it again for every stage.
    With ``RunnerCompat.container_per_stage`` (before 16.0) every stage gets a new container,
    named ``<prefix>-<kind>-<n>`` after the number of job containers created before it; the
    earlier ones stay, stopped, until the job's cleanup removes them.
    """

    def __init__(self, context: JobContext, trace: Trace, labeler: Labeler, network: NetworkManager,
                 binds: list[str], sources_path: Path | None, helper_image_id: str) -> None:
        self._context = context
        self._trace = trace
        self._labeler = labeler
        self._network = network
        self._binds = binds
        self._sources = sources_path
        self._helper_image_id = helper_image_id
        self._extra_hosts: list[str] = []
        self._links: list[tuple[str, str]] = []
        self.ids: dict[str, str] = {}
        self._created = 0

    def reach_services(self, extra_hosts: list[str], links: list[tuple[str, str]]) -> None:
        """Set the service hosts entries (18.7+) or Docker links (before 18.7) of both containers."""
        self._extra_hosts = extra_hosts
        self._links = links

    @property
    def temp_dir(self) -> str:
        """The project's ``.tmp`` directory that contains file variables."""
        return self._context.project_dir + ".tmp"

    def _name(self, kind: str) -> str:
        prefix = self._context.prefix
        if self._context.compat.container_per_stage:
            return naming.per_stage_container_name(prefix, kind, self._created)
        return (naming.build_container_name if kind == "build" else naming.predefined_container_name)(prefix)

    def _spec(self, kind: str, image: str, command: list[str], entrypoint, privileged: bool) -> containers.ContainerSpec:
        context = self._context
        name = self._name(kind)
        return containers.ContainerSpec(
            kind=kind, name=name, image=image, command=command, entrypoint=entrypoint,
            hostname=context.settings.hostname or context.unique_name,
            environment=container_environment(context.variables, self.temp_dir),
            labels=self._labeler.labels(kind), binds=self._binds, privileged=privileged,
            network_mode=self._network.mode, networking_config=self._network.networking_config(["build", name]),
            extra_hosts=[*context.settings.extra_hosts, *self._extra_hosts], links=self._links,
            dns=list(context.settings.dns), user=context.settings.user if kind == "build" else "",
        )

    def container(self, kind: str) -> str:
        """Return the id of the ``build`` or ``predefined`` container to run the next stage in.

        The container is created on first use, and for every stage when containers are per stage.
        """
        if kind in self.ids and not self._context.compat.container_per_stage:
            return self.ids[kind]
        settings = self._context.settings
        if kind == "build":
            entrypoint = list((self._context.payload.get("image") or {}).get("entrypoint") or ()) or None
            privileged = settings.privileged and image_matches(self._context.image, settings.allowed_privileged_images)
            spec = self._spec("build", self._context.image, ["sh", "-c", script.detect_shell_script()],
                              entrypoint, privileged)
        else:
            # The runner matches the helper's image id against the allow-list, so a non-empty
            # list normally leaves the helper unprivileged.
            privileged = settings.privileged and image_matches(self._helper_image_id, settings.allowed_privileged_images)
            spec = self._spec("predefined", settings.helper_image, HELPER_COMMAND, None, privileged)

        container_id = containers.create(self._context.client, spec)
        self._created += 1
        self.ids[kind] = container_id
        self._context.containers.append({"id": container_id, "name": spec.name, "type": kind})
        if kind == "predefined" and self._context.strategy != "none":
            self._copy_sources(container_id)
        return container_id

    def _copy_sources(self, container_id: str) -> None:
        archive = sources.repository_archive(self._sources)
        self._context.client.api.put_archive(container_id, sources.SOURCE_MOUNT, archive)

    def run(self, kind: str, body: str, timeout: float | None) -> int:
        """Run a stage body in the ``build`` or ``predefined`` container; return its exit code."""
        debug_trace = self._context.variables.get("CI_DEBUG_TRACE").lower() == "true"
        wrapped = script.wrap(body, trace=debug_trace)
        container_id = self.container(kind)
        log.debug("running a %s stage in %s", kind, container_id[:12])
        return containers.run_stage(self._context.client, container_id, wrapped, self._trace, timeout)
