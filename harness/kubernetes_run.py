"""One pod run with placement: the node's engine and each dind sidecar's daemon, read before deletion.

The node is a host engine (daemon ``host`` in the placement): by default the session's sandbox
engine, or the real engine with ``--host-engine=local``. A privileged container is taken to be a
dind sidecar, and its daemon is read through ``docker exec`` as ``dind:<container>``. Because
nothing can be pulled from Docker Hub here, such a pod gets the harness's pull mirror as a node
admin would wire it: ``hostAliases`` for the mirror's names, and ``certs.d`` and ``daemon.json``
as binds. A sandbox node pulls the pod's images through the same mirror before the pod starts.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import docker
import docker.errors

from harness import labels
from harness.host import HostEngine
from harness.kubernetes import API_TIMEOUT, PAUSE_IMAGE, Pod
from harness.kubernetes_node import Node, SocketProbe, probe_pod_sockets, snapshot_node
from harness.kubernetes_spec import PodSpec
from harness.placement import ContainerRecord, Placement, Snapshot, snapshot_dind
from harness.registry import Mirror, shared_mirror

log = logging.getLogger(__name__)

MIRROR_IMAGES = ("httpd:latest", "busybox:latest", "alpine:3")


@dataclasses.dataclass
class PodResult:
    """Outcome of one pod run: container statuses, socket probes and placement."""

    pod: str
    containers: list[dict]
    placement: Placement
    socket_probes: list[SocketProbe]
    node_leftovers: list[ContainerRecord]

    def restarts(self, container: str) -> int:
        """Return how often the pod restarted ``container``."""
        return next(row["restarts"] for row in self.containers if row["name"] == container)

    def render(self) -> str:
        """Return the containers, restarts, socket probes and placement as text."""
        lines = [f"pod {self.pod}:", "CONTAINER             STATE       RESTARTS  EXIT CODES"]
        for row in self.containers:
            codes = ", ".join(str(code) for code in row["exit_codes"]) or "-"
            lines.append(f"{row['name']:<21} {row['state']:<11} {row['restarts']:<9} {codes}")
        lines += [probe.describe() for probe in self.socket_probes]
        lines.append(self.placement.table())
        for record in self.node_leftovers:
            lines.append(f"outlived the pod on the node: container {record.name} ({record.image}), removed at teardown")
        return "\n".join(lines)


class PodRun:
    """A pod with its placement observation; a context manager that always deletes the pod.

    Args:
        client: docker-py client of the real engine, the node when ``host`` is None.
        spec: the checked pod manifest.
        backoff_scale: factor on the kubelet's restart back-off (1.0 is the kubelet's timing).
        host: the host engine that is the node, such as the session's sandbox.
    """

    def __init__(self, client: docker.DockerClient, spec: PodSpec, backoff_scale: float = 1.0,
                 host: HostEngine | None = None) -> None:
        self.node = Node(host or HostEngine.local(client))
        # Snapshots list every container; on a loaded engine that exceeds a 5 s request timeout.
        self.client = self.node.connect(API_TIMEOUT)
        self.spec = spec
        self.backoff_scale = backoff_scale
        self.mirror: Mirror | None = None
        # Whether close() stops the mirror; a sandbox node's mirror belongs to its host.
        self._owns_mirror = False
        self.pod: Pod | None = None
        self.snapshots: list[Snapshot] = []
        self.baseline: Snapshot | None = None
        self.socket_probes: list[SocketProbe] = []
        self.node_leftovers: list[ContainerRecord] = []

    @property
    def sidecars(self) -> list[str]:
        """Return the names of the privileged containers, read as dind daemons."""
        return [container.name for container in self.spec.containers if container.privileged]

    def __enter__(self) -> PodRun:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> None:
        self.socket_probes = probe_pod_sockets(self.node, self.spec)
        if self.node.sandbox is not None:
            self._seed_sandbox()
        self.baseline = snapshot_node(self.client, "before the pod")
        spec, binds = self.spec, ()
        if self.sidecars:
            if self.mirror is None:
                self._owns_mirror = True
                self.mirror = Mirror(self.client).with_images(self._mirror_images()).start()
            wiring = self.mirror.wiring()
            aliases = tuple(tuple(entry.split(":", 1)) for entry in wiring.extra_hosts)
            spec = dataclasses.replace(spec, host_aliases=spec.host_aliases + aliases)
            binds = wiring.volumes
        self.pod = Pod(self.client, spec, self.backoff_scale, extra_binds=binds, node=self.node).start()

    def _seed_sandbox(self) -> None:
        """Push the images pods pull to the host's mirror, and pull the pod's images into the sandbox."""
        host = self.node.host
        self.mirror = shared_mirror(host.real_client, host.network, self._mirror_images())
        images = [PAUSE_IMAGE, *(container.image for container in self.spec.containers)]
        self.node.seed(list(dict.fromkeys(images)))

    def _mirror_images(self) -> list[str]:
        """Return the images a pod's commands may pull that exist on the real engine."""
        return [image for image in MIRROR_IMAGES if _exists(self.node.host.real_client, image)]

    def observe(self, when: str = "before deletion") -> None:
        """Read the node's engine and every running dind sidecar's daemon."""
        self.snapshots.append(snapshot_node(self.client, when))
        for name in self.sidecars:
            try:
                self.snapshots.append(snapshot_dind(self.client, self.pod.statuses[name].id, f"dind:{name}", when))
            except RuntimeError as error:
                log.warning("pod %s: cannot read the daemon in %s: %s", self.spec.name, name, error)

    def result(self) -> PodResult:
        """Return the statuses and placement seen so far."""
        with self.pod._lock:
            rows = [{"name": s.name, "state": s.state, "restarts": s.restarts, "exit_codes": list(s.exit_codes)}
                    for s in self.pod.statuses.values()]
        placement = Placement("k8s", self.baseline, list(self.snapshots))
        return PodResult(self.spec.name, rows, placement, self.socket_probes, list(self.node_leftovers))

    def close(self) -> None:
        """Delete the pod, record what outlived it on the node, remove that and the mirror."""
        if self.pod is not None:
            self.pod.delete()
            if self.baseline is not None:
                after = snapshot_node(self.client, "after the pod was deleted")
                self.snapshots.append(after)
                self.node_leftovers = self._leftovers(after)
                for record in self.node_leftovers:
                    _remove(self.client, record.id)
        if self.mirror is not None and self._owns_mirror:
            self.mirror.stop()
        self.client.close()

    def _leftovers(self, after: Snapshot) -> list[ContainerRecord]:
        """Return node containers the pod's commands created that are still there.

        A DooD pod's containers carry no harness labels, and other sessions' DooD jobs create
        unlabelled containers on the same engine. Only containers that are new since the baseline
        and whose image the pod's commands name are taken as this pod's.
        """
        known = {record.name for record in self.baseline.containers}
        words = " ".join(" ".join((*(c.command or ()), *(c.args or ()))) for c in self.spec.containers)
        named = set(re.findall(r"[\w./-]+:[\w.-]+", words))
        return [record for record in after.containers
                if record.name not in known and record.image in named
                and record.labels.get(labels.MANAGED) != "true"]


def _exists(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def _remove(client: docker.DockerClient, container_id: str) -> None:
    try:
        client.containers.get(container_id).remove(force=True, v=True)
        log.info("removed container %s that outlived the pod on the node", container_id)
    except docker.errors.NotFound:
        pass
