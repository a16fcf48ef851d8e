"""Where images, containers, volumes and networks ended up: snapshots of each daemon, and assertions.

A snapshot lists one daemon's images, containers, volumes and networks at one moment. The host
engine is read through the Docker API. A dind service's daemon is read through ``docker exec``
into the service container, over its inner unix socket, so TLS and ports do not matter. That
reading works right up to the moment the runner removes the service. This module is also imported inside the runner
container, so it uses only the standard library and docker-py calls that version 5 has.

Daemon names: ``host`` for the engine the runner container runs on, ``dind:<job>`` for the dind
service of a job (``dind:<job>:<alias>`` when a job has several).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import docker.errors

from harness.dind_start import try_read_dind_start

log = logging.getLogger(__name__)

HOST = "host"


@dataclass
class ContainerRecord:
    """A container as a snapshot saw it."""

    name: str
    id: str
    image: str
    state: str
    network_mode: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Snapshot:
    """One daemon's resources at one moment (``when`` is e.g. ``before BuildImages``)."""

    daemon: str
    when: str
    images: list[str] = field(default_factory=list)
    containers: list[ContainerRecord] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    paths: dict[str, list[str]] = field(default_factory=dict)
    # For a dind daemon: DindStart.to_dict() of how it started (harness.dind_start); else None.
    start: dict | None = None

    def to_dict(self) -> dict:
        """Return a JSON-serialisable copy."""
        return asdict(self)

    def masked(self, hide: Callable[[str], str]) -> Snapshot:
        """Return a copy whose names and paths went through ``hide``, such as a secret mask.

        A job may put a masked variable into a resource name (``docker volume create vol-$TOKEN``),
        and the placement table and report print those names.
        """
        containers = [dataclasses.replace(record, name=hide(record.name), image=hide(record.image),
                                          labels={key: hide(value) for key, value in record.labels.items()})
                      for record in self.containers]
        # replace() keeps every other field, such as a dind daemon's start record.
        return dataclasses.replace(
            self, images=[hide(name) for name in self.images], containers=containers,
            volumes=[hide(name) for name in self.volumes], networks=[hide(name) for name in self.networks],
            paths={hide(path): [hide(name) for name in names] for path, names in self.paths.items()})

    @classmethod
    def from_dict(cls, data: dict) -> "Snapshot":
        """Rebuild a snapshot from :meth:`to_dict` output."""
        containers = [ContainerRecord(**record) for record in data.get("containers", [])]
        return cls(**{**data, "containers": containers})


# Harness containers that are infrastructure, not something a job put on the daemon.
INFRASTRUCTURE_TYPES = {"registry", "mirror", "runner", "probe"}


def _belongs_to_others(resource_labels: dict | None) -> bool:
    """Return whether a labelled resource is another session's, or this session's infrastructure.

    Placement reports what jobs left on a daemon; a parallel session's containers or the
    harness's own registry would make those reports lie.
    """
    from harness import labels

    resource_labels = resource_labels or {}
    if resource_labels.get(labels.MANAGED) != "true":
        return False
    return (resource_labels.get(labels.SESSION) != labels.session_id()
            or resource_labels.get(labels.TYPE) in INFRASTRUCTURE_TYPES)


def snapshot_engine(client, daemon: str, when: str, watch_paths: tuple[str, ...] = (),
                    list_path: Callable[[str], list[str] | None] | None = None) -> Snapshot:
    """Read images, containers, volumes and networks of the engine behind ``client``.

    Resources of other harness sessions and this session's registry and runner containers are
    left out. ``watch_paths`` are host paths. Each is listed (file names only) when it is a
    directory, through ``list_path`` (default: this machine's filesystem), which returns None
    for a missing directory.
    """

    snapshot = Snapshot(daemon=daemon, when=when)
    # The image list's summaries carry the tags, so unlike docker-py's images.list() nothing is
    # inspected per image and an image removed meanwhile cannot raise ImageNotFound.
    for summary in client.api.images():
        snapshot.images.extend(tag for tag in summary.get("RepoTags") or [] if tag != "<none>:<none>")
    # The list's summaries carry every field a record needs, so one request reads all containers
    # instead of one inspection each, and a container removed meanwhile cannot raise NotFound.
    for summary in client.api.containers(all=True):
        if _belongs_to_others(summary.get("Labels")):
            continue
        snapshot.containers.append(ContainerRecord(
            name=_primary_name(summary.get("Names") or []), id=summary["Id"][:12], image=summary.get("Image", ""),
            state=summary.get("State", ""), network_mode=(summary.get("HostConfig") or {}).get("NetworkMode", ""),
            labels=dict(summary.get("Labels") or {})))
    snapshot.volumes = [v.name for v in client.volumes.list() if not _belongs_to_others(v.attrs.get("Labels"))]
    snapshot.networks = [n.name for n in client.networks.list() if not _belongs_to_others(n.attrs.get("Labels"))]
    list_path = list_path or _list_local_path
    for path in watch_paths:
        names = list_path(path)
        if names is not None:
            snapshot.paths[path] = names
    return snapshot


def _list_local_path(path: str) -> list[str] | None:
    return sorted(os.listdir(path)) if os.path.isdir(path) else None


def _primary_name(names: list[str]) -> str:
    """Return a container's own name from a list summary's ``Names``.

    Legacy links add names of the form ``/other/alias``, so the own name is the one without a
    second slash.
    """
    own = [name.lstrip("/") for name in names if "/" not in name.lstrip("/")]
    if own:
        return own[0]
    return names[0].lstrip("/") if names else ""


_INNER_SCRIPT = (
    "docker image ls --format '{{json .}}' | sed 's/^/image /';"
    "docker ps -a --no-trunc --format '{{json .}}' | sed 's/^/container /';"
    "docker volume ls --format '{{json .}}' | sed 's/^/volume /';"
    "docker network ls --format '{{json .}}' | sed 's/^/network /';"
)


def snapshot_dind(client, service_container_id: str, daemon: str, when: str,
                  watch_paths: tuple[str, ...] = ()) -> Snapshot:
    """Read the daemon inside a dind service through ``docker exec <service> docker ...``.

    The inner client talks to the unix socket named in the command line of the service's dockerd.
    It never uses the job's ``DOCKER_HOST``, because a ``tcp://`` value from the job's variables
    would point it elsewhere. Watched paths are listed inside the service container's filesystem.

    Raises:
        RuntimeError: the service's daemon did not respond (the exit code and output are included).
    """
    container = client.containers.get(service_container_id)
    socket = _dockerd_unix_socket(container)
    command = ["env", "-u", "DOCKER_TLS_VERIFY", "-u", "DOCKER_CERT_PATH", f"DOCKER_HOST={socket}",
               "sh", "-c", _INNER_SCRIPT]
    exit_code, output = container.exec_run(command)
    text = output.decode(errors="replace")
    if exit_code != 0:
        raise RuntimeError(f"cannot read the daemon in {container.name} at {socket} (exit {exit_code}): {text[-500:]}")

    snapshot = _parse_inner_listing(text, daemon, when)
    for path in watch_paths:
        listing = _list_in_container(container, path)
        if listing is not None:
            snapshot.paths[path] = listing
    return snapshot


DEFAULT_DOCKER_SOCKET = "unix:///var/run/docker.sock"

# Prints the NUL-separated command line of the first dockerd process, one argument per line.
_DOCKERD_ARGS_SCRIPT = (
    'for proc in /proc/[0-9]*; do '
    'if [ "$(cat "$proc/comm" 2> /dev/null)" = dockerd ]; then tr "\\0" "\\n" < "$proc/cmdline"; exit 0; fi; '
    'done'
)


def _dockerd_unix_socket(container) -> str:
    """Return the first unix:// address of the dockerd in ``container``, or the default socket.

    The dind entrypoint moves the socket to a ``unix://`` DOCKER_HOST (GitLab Runner's own CI puts
    it on the shared /certs/client volume), and a service ``command`` may add ``--host`` flags.
    """
    exit_code, output = container.exec_run(["sh", "-c", _DOCKERD_ARGS_SCRIPT])
    arguments = output.decode(errors="replace").splitlines() if exit_code == 0 else []
    unix_hosts = [host for host in dockerd_hosts(arguments) if host.startswith("unix://")]

    # NOTE: hosts set in daemon.json are not read, so such a daemon is looked for at the default socket.
    return unix_hosts[0] if unix_hosts else DEFAULT_DOCKER_SOCKET


def dockerd_hosts(arguments: list[str]) -> list[str]:
    """Return the values of ``-H``/``--host`` in a dockerd command line, in order.

    Accepts ``--host=X``, ``--host X``, ``-H=X``, ``-H X`` and ``-HX``, the forms dockerd's flag
    parser accepts.
    """
    hosts = []
    for index, argument in enumerate(arguments):
        following = arguments[index + 1] if index + 1 < len(arguments) else None
        if argument in ("--host", "-H"):
            if following is not None:
                hosts.append(following)
        elif argument.startswith("--host="):
            hosts.append(argument.removeprefix("--host="))
        elif argument.startswith("-H"):
            hosts.append(argument.removeprefix("-H").removeprefix("="))
    return hosts


def _parse_inner_listing(text: str, daemon: str, when: str) -> Snapshot:
    snapshot = Snapshot(daemon=daemon, when=when)
    for line in text.splitlines():
        kind, _, payload = line.partition(" ")
        if not payload.startswith("{"):
            continue
        row = json.loads(payload)
        if kind == "image" and row.get("Repository") != "<none>":
            snapshot.images.append(f"{row['Repository']}:{row['Tag']}")
        elif kind == "container":
            snapshot.containers.append(ContainerRecord(
                name=row["Names"], id=row["ID"][:12], image=row["Image"], state=row["State"],
                network_mode=row.get("Networks", "")))
        elif kind == "volume":
            snapshot.volumes.append(row["Name"])
        elif kind == "network":
            snapshot.networks.append(row["Name"])
    return snapshot


def _list_in_container(container, path: str) -> list[str] | None:
    """Return the file names directly in ``path`` inside a container, or None if it does not exist.

    Reads through the archive endpoint, which works on stopped containers too (a build container
    is stopped between its stages and when the runner is about to remove it).
    """
    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    data = io.BytesIO(b"".join(stream))
    with tarfile.open(fileobj=data) as archive:
        names = {member.name.split("/", 2)[1] for member in archive.getmembers() if member.name.count("/") >= 1}
    return sorted(name for name in names if name)


def snapshot_container_paths(client, container_id: str, daemon: str, when: str,
                             watch_paths: tuple[str, ...]) -> Snapshot:
    """List the watched paths inside one container (for example the job's build container)."""
    container = client.containers.get(container_id)
    snapshot = Snapshot(daemon=daemon, when=when)
    for path in watch_paths:
        listing = _list_in_container(container, path)
        if listing is not None:
            snapshot.paths[path] = listing
    return snapshot


def normalize_reference(reference: str) -> str:
    """Return ``reference`` with ``:latest`` added when it names no tag or digest."""
    last = reference.rsplit("/", 1)[-1]
    if ":" in last or "@" in reference:
        return reference
    return f"{reference}:latest"


@dataclass
class Appearance:
    """A resource that appeared on a daemon during the run, as one row of the placement table."""

    daemon: str
    kind: str
    name: str
    state: str = ""


class Placement:
    """The resources that appeared on each daemon during one pipeline run, with field-style assertions.

    Built from the host engine's baseline (before the first job), the host snapshots taken after
    each job, and the snapshots of each dind service taken right before the runner removed it.
    """

    def __init__(self, mode: str, baseline: Snapshot, snapshots: list[Snapshot]) -> None:
        self.mode = mode
        self.baseline = baseline
        self.snapshots = snapshots

    @property
    def daemons(self) -> list[str]:
        """Return the names of every daemon seen, host first."""
        names = [HOST]
        names += [s.daemon for s in self.snapshots if s.daemon != HOST and s.daemon not in names]
        return names

    def final(self, daemon: str) -> Snapshot | None:
        """Return the last snapshot of ``daemon``."""
        matching = [s for s in self.snapshots if s.daemon == daemon]
        return matching[-1] if matching else None

    def appearances(self) -> list[Appearance]:
        """Return every image, container, volume and watched path that appeared, per daemon."""
        rows: list[Appearance] = []
        for daemon in self.daemons:
            rows.extend(self._appeared_on(daemon))
        return rows

    def _appeared_on(self, daemon: str) -> list[Appearance]:
        before = self.baseline if daemon == HOST else Snapshot(daemon=daemon, when="empty daemon")
        seen_images, seen_containers, seen_volumes = set(before.images), {c.name for c in before.containers}, set(before.volumes)
        rows: list[Appearance] = []
        for snapshot in (s for s in self.snapshots if s.daemon == daemon):
            for image in snapshot.images:
                if image not in seen_images:
                    seen_images.add(image)
                    rows.append(Appearance(daemon, "image", image))
            for container in snapshot.containers:
                if container.name not in seen_containers:
                    seen_containers.add(container.name)
                    rows.append(Appearance(daemon, "container", container.name, _describe(container)))
            for volume in snapshot.volumes:
                if volume not in seen_volumes:
                    seen_volumes.add(volume)
                    rows.append(Appearance(daemon, "volume", volume))
        final = self.final(daemon)
        for path, names in (final.paths.items() if final else []):
            rows.append(Appearance(daemon, "path", path, ", ".join(names) or "(empty)"))
        return rows

    def image(self, reference: str) -> "ImageQuery":
        """Start an assertion about where the image ``reference`` was."""
        return ImageQuery(self, normalize_reference(reference))

    def container(self, name: str) -> "ContainerQuery":
        """Start an assertion about where the container ``name`` ran."""
        return ContainerQuery(self, name)

    def path(self, path: str) -> "PathQuery":
        """Start an assertion about where the watched path ``path`` had files."""
        return PathQuery(self, path)

    def table(self) -> str:
        """Render the appearances as an aligned table: daemon, kind, name, state."""
        rows = [("DAEMON", "KIND", "NAME", "STATE")]
        rows += [(a.daemon, a.kind, a.name, a.state) for a in self.appearances()] or [("-", "-", "nothing appeared", "")]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2].ljust(widths[2])}  {r[3]}".rstrip()
                 for r in rows]
        return f"placement ({self.mode}):\n" + "\n".join(lines)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable copy."""
        return {"mode": self.mode, "baseline": self.baseline.to_dict(),
                "snapshots": [s.to_dict() for s in self.snapshots]}


def _describe(container: ContainerRecord) -> str:
    if container.network_mode in ("host", "none"):
        return f"{container.state}, net={container.network_mode}"
    return container.state


def _matches(daemon: str, selector: str) -> bool:
    """Return whether ``daemon`` is selected: ``dind`` selects every ``dind:*`` daemon."""
    return daemon == selector or daemon.startswith(selector + ":")


class _Query:
    kind = ""

    def __init__(self, placement: Placement, name: str) -> None:
        self.placement = placement
        self.name = name

    def daemons_with(self) -> list[str]:
        """Return the daemons on which the resource appeared."""
        return sorted({a.daemon for a in self.placement.appearances() if a.kind == self.kind and a.name == self.name})

    def _fail(self, expectation: str) -> None:
        __tracebackhide__ = True
        where = ", ".join(self.daemons_with()) or "nowhere"
        raise AssertionError(f"{self.kind} {self.name} {expectation}, but it appeared on: {where}\n"
                             f"{self.placement.table()}")

    def in_daemon(self, selector: str) -> "_Query":
        """Assert the resource appeared on a daemon matching ``selector`` (``host``, ``dind``, ``dind:Job``)."""
        __tracebackhide__ = True
        if not any(_matches(d, selector) for d in self.daemons_with()):
            self._fail(f"was expected on {selector}")
        return self

    def not_in(self, selector: str) -> "_Query":
        """Assert the resource never appeared on a daemon matching ``selector``."""
        __tracebackhide__ = True
        if any(_matches(d, selector) for d in self.daemons_with()):
            self._fail(f"was expected never on {selector}")
        return self

    def only_in(self, selector: str) -> "_Query":
        """Assert the resource appeared on ``selector`` and on no other daemon."""
        __tracebackhide__ = True
        daemons = self.daemons_with()
        if not daemons or not all(_matches(d, selector) for d in daemons):
            self._fail(f"was expected only on {selector}")
        return self


class ImageQuery(_Query):
    """Assertions about one image reference."""

    kind = "image"


class ContainerQuery(_Query):
    """Assertions about one container name."""

    kind = "container"

    def running_on(self, selector: str) -> "ContainerQuery":
        """Assert the container still runs on ``selector`` in that daemon's last snapshot."""
        __tracebackhide__ = True
        for daemon in self.placement.daemons:
            final = self.placement.final(daemon)
            if _matches(daemon, selector) and final and any(
                    c.name == self.name and c.state == "running" for c in final.containers):
                return self
        self._fail(f"was expected running on {selector} at the end")
        return self

    def gone_from(self, selector: str) -> "ContainerQuery":
        """Assert the container is absent from the last snapshot of every daemon matching ``selector``."""
        __tracebackhide__ = True
        for daemon in self.placement.daemons:
            final = self.placement.final(daemon)
            if _matches(daemon, selector) and final and any(c.name == self.name for c in final.containers):
                self._fail(f"was expected gone from {daemon} at the end")
        return self


class PathQuery(_Query):
    """Assertions about one watched path (a directory whose files are listed in each snapshot)."""

    kind = "path"

    def has_files_in(self, selector: str) -> "PathQuery":
        """Assert the path contains at least one file on a daemon (or container) matching ``selector``."""
        __tracebackhide__ = True
        for appearance in self.placement.appearances():
            if appearance.kind == "path" and appearance.name == self.name and _matches(appearance.daemon, selector) \
                    and appearance.state not in ("", "(empty)"):
                return self
        self._fail(f"was expected to hold files on {selector}")
        return self

    def has_no_files_in(self, selector: str) -> "PathQuery":
        """Assert the path is missing or empty on every daemon (or container) matching ``selector``."""
        __tracebackhide__ = True
        for appearance in self.placement.appearances():
            if appearance.kind == "path" and appearance.name == self.name and _matches(appearance.daemon, selector) \
                    and appearance.state not in ("", "(empty)"):
                self._fail(f"was expected without files on {appearance.daemon}")
        return self


class PlacementObserver:
    """Executor hooks that read what a job's containers contain right before the runner removes them.

    For each service: its daemon as ``dind:<job>`` when ``docker`` responds inside it, and the
    watched paths in its filesystem as ``service:<job>``. For the build container: the watched
    paths as ``job:<job>``. A job with several services gets ``:<alias>`` appended per service.
    """

    def __init__(self, watch_paths: tuple[str, ...] = ()) -> None:
        self.watch_paths = tuple(watch_paths)
        self.snapshots: list[Snapshot] = []

    def job_started(self, context) -> None:
        """Nothing to read yet: the host baseline is taken by the harness outside the runner."""

    def services_ready(self, context, services) -> None:
        """Nothing to read yet: daemons are read once the job's scripts have run."""

    def before_cleanup(self, context, services, build_container: str | None) -> None:
        """Read every service's daemon and filesystem, and the build container's filesystem."""
        job = context.payload["job_info"]["name"]
        for service in services:
            if not service.container_id:
                continue
            suffix = f":{service.aliases[0]}" if len(services) > 1 and service.aliases else ""
            self._read_service(context.client, service, f"{job}{suffix}")
        if build_container and self.watch_paths:
            self.snapshots.append(snapshot_container_paths(
                context.client, build_container, f"job:{job}", "before removal", self.watch_paths))

    def _read_service(self, client, service, name: str) -> None:
        try:
            snapshot = snapshot_dind(client, service.container_id, f"dind:{name}", "before removal")
            start = try_read_dind_start(client, service.container_id)
            snapshot.start = start.to_dict() if start else None
            self.snapshots.append(snapshot)
        except (RuntimeError, docker.errors.APIError) as error:
            # A service that is not a dind daemon, or a daemon that died, is normal here.
            log.debug("service %s has no readable daemon: %s", service.container_name, error)
        if self.watch_paths:
            self.snapshots.append(snapshot_container_paths(
                client, service.container_id, f"service:{name}", "before removal", self.watch_paths))
