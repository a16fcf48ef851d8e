"""Pods run on the Docker engine the way a kubelet lays them out.

No cluster exists here, so :class:`Pod` emulates the kubelet's part on one node, a host engine
(:class:`harness.kubernetes_node.Node`: the session's sandbox engine or the real one):

- a pause container (``dind-dood-harness/pause``) owns the pod's network and IPC namespaces, its
  hostname and its ``/etc/hosts`` (``hostAliases``); every container joins it with
  ``--network container:<pause> --ipc container:<pause>``, so containers reach each other on
  ``localhost``;
- ``hostPath`` volumes are binds from the node's filesystem, ``emptyDir`` volumes are labelled
  Docker volumes removed with the pod;
- containers start in manifest order without waiting for each other; a supervisor thread restarts
  exited containers by ``restartPolicy`` with the kubelet's back-off (10 s, doubled per restart,
  at most 300 s, reset after 10 minutes of running), scaled by ``backoff_scale``.

Not emulated: scheduling, probes, init containers, the API server, Services, pod IPs from a CNI,
image pulls (the engine's local images are used). A restart starts the same container again, where
a kubelet creates a new one, so ``docker logs`` keeps the output of every attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import docker
import docker.errors
import requests.exceptions

from harness import labels
from harness.kubernetes_node import Node, local_node, prepare_host_path
from harness.kubernetes_spec import Container, PodSpec

log = logging.getLogger(__name__)

PAUSE_IMAGE = "dind-dood-harness/pause:latest"
BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0
POLL_INTERVAL = 0.3
# Seconds per engine request. The harness's usual client gives up after 5 s, which a loaded engine
# exceeds when it stops a dind sidecar or runs an exec while other sessions build images.
API_TIMEOUT = 120


@dataclass
class ContainerStatus:
    """A pod container as the supervisor last saw it; ``restarts`` counts restarts, as kubectl shows."""

    name: str
    id: str = ""
    state: str = "waiting"
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    next_start: float | None = None
    started_at: float = 0.0
    backoff_step: int = 0


class Pod:
    """One pod on the engine; use as a context manager so everything is removed also on failure.

    Args:
        client: docker-py client of the real engine, the node when ``node`` is None.
        spec: the checked manifest (:func:`harness.kubernetes_spec.load_pod`).
        backoff_scale: factor on the kubelet's restart back-off; tests use 0.1 (1 s, 2 s, 4 s ...).
        extra_binds: ``host:container[:ro]`` binds added to every container, as a node admin's
            registry trust (``certs.d``, ``daemon.json``) would be.
        node: the node to run on, such as the session's sandbox host. The pod opens its own
            connection to the node's engine with a longer request timeout.
    """

    def __init__(self, client: docker.DockerClient, spec: PodSpec, backoff_scale: float = 1.0,
                 extra_binds: tuple[str, ...] = (), node: Node | None = None) -> None:
        self.node = node or local_node(client)
        self.client = self.node.connect(API_TIMEOUT)
        self.spec = spec
        self.backoff_scale = backoff_scale
        self.extra_binds = extra_binds
        self.pause = None
        self.statuses = {container.name: ContainerStatus(container.name) for container in spec.containers}
        self._volumes: dict[str, str] = {}
        self._created_paths: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._suffix = labels.session_id()

    def __enter__(self) -> Pod:
        try:
            return self.start()
        except BaseException:
            self.delete()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def _labels(self, role: str) -> dict[str, str]:
        return labels.managed_labels("k8s-pod", pod=self.spec.name, pod_role=role)

    def _name(self, part: str) -> str:
        return f"k8s_{part}_{self.spec.name}_{self._suffix}"

    def start(self) -> Pod:
        """Create the pause container, the volumes and every container, start them in order.

        Raises:
            InputError: a hostPath type check failed.
            docker.errors.APIError: the engine rejected a container (for example a missing image).
        """
        self._prepare_volumes()
        self.pause = self.client.containers.run(
            PAUSE_IMAGE, name=self._name("POD"), detach=True, hostname=self.spec.name,
            extra_hosts={host: ip for host, ip in self.spec.host_aliases} or None,
            ipc_mode="shareable", labels=self._labels("pause"))
        log.info("pod %s: pause container %s owns the network and IPC namespaces", self.spec.name,
                 self.pause.short_id)

        for container in self.spec.containers:
            created = self.client.containers.create(container.image, **self._create_options(container))
            self.statuses[container.name].id = created.id
            self._start(container.name)
        self._thread = threading.Thread(target=self._supervise, name=f"pod-{self.spec.name}", daemon=True)
        self._thread.start()
        return self

    def _prepare_volumes(self) -> None:
        for index, volume in enumerate(self.spec.volumes):
            if volume.kind == "emptyDir":
                created = self.client.volumes.create(name=self._name(f"emptydir-{volume.name}"),
                                                     labels=self._labels("emptyDir"))
                self._volumes[volume.name] = created.name
                continue
            made = prepare_host_path(self.node, volume, self.spec.source, index)
            if made is not None:
                self._created_paths.append(made)
            self._volumes[volume.name] = volume.path

    def _create_options(self, container: Container) -> dict:
        binds = [f"{self._volumes[m.volume]}:{m.path}{':ro' if m.read_only else ''}" for m in container.mounts]
        limits = container.resources
        options = {
            "name": self._name(container.name),
            "environment": dict(container.env),
            "network_mode": f"container:{self.pause.id}",
            "ipc_mode": f"container:{self.pause.id}",
            "privileged": container.privileged,
            "volumes": binds + list(self.extra_binds),
            "labels": self._labels(container.name),
            "working_dir": container.working_dir or None,
        }
        # command replaces ENTRYPOINT and args replaces CMD, as in a pod; the engine drops the
        # image's CMD whenever ENTRYPOINT is replaced, which is what Kubernetes does too.
        if container.command is not None:
            options["entrypoint"] = list(container.command)
        if container.args is not None:
            options["command"] = list(container.args)
        if limits.cpu_limit:
            options["nano_cpus"] = limits.cpu_limit * 1_000_000
        if limits.cpu_request:
            options["cpu_shares"] = max(2, limits.cpu_request * 1024 // 1000)
        if limits.memory_limit:
            options["mem_limit"] = limits.memory_limit
        # NOTE: memory requests only steer the scheduler in Kubernetes; the engine gets nothing for them.
        return options

    def _start(self, name: str) -> None:
        status = self.statuses[name]
        self.client.api.start(status.id)
        status.state, status.next_start, status.started_at = "running", None, time.monotonic()
        log.debug("pod %s: started %s (restarts %d)", self.spec.name, name, status.restarts)

    def _backoff(self, restarts: int) -> float:
        return min(BACKOFF_INITIAL * 2 ** restarts, BACKOFF_MAX) * self.backoff_scale

    def _supervise(self) -> None:
        while not self._stop.wait(POLL_INTERVAL):
            for status in self.statuses.values():
                try:
                    with self._lock:
                        self._check(status)
                except docker.errors.APIError as error:
                    log.warning("pod %s: cannot check container %s: %s", self.spec.name, status.name, error)

    def _check(self, status: ContainerStatus) -> None:
        """Record an exit and restart the container once its back-off has passed."""
        if self._stop.is_set():
            return
        now = time.monotonic()
        if status.state == "running":
            state = self.client.api.inspect_container(status.id)["State"]
            if state["Running"]:
                return
            status.exit_codes.append(state["ExitCode"])
            if now - status.started_at >= BACKOFF_RESET_AFTER * self.backoff_scale:
                status.backoff_step = 0
            policy = self.spec.restart_policy
            if policy == "Never" or (policy == "OnFailure" and state["ExitCode"] == 0):
                status.state = "terminated"
                log.info("pod %s: %s exited with %d; restartPolicy %s keeps it stopped", self.spec.name,
                         status.name, state["ExitCode"], policy)
                return
            status.state = "back-off"
            status.next_start = now + self._backoff(status.backoff_step)
            log.info("pod %s: %s exited with %d; restarting in %.1f s (back-off)", self.spec.name,
                     status.name, state["ExitCode"], status.next_start - now)
        elif status.state == "back-off" and now >= status.next_start:
            status.restarts += 1
            status.backoff_step += 1
            self._start(status.name)

    def container(self, name: str):
        """Return the docker-py container of pod container ``name``."""
        return self.client.containers.get(self.statuses[name].id)

    def exec(self, name: str, command: list[str]) -> tuple[int, str]:
        """Run ``command`` in a running pod container (``kubectl exec``) and return exit code and output."""
        code, output = self.container(name).exec_run(command)
        return code, output.decode(errors="replace")

    def logs(self, name: str) -> str:
        """Return the output of every run of container ``name`` so far."""
        return self.container(name).logs().decode(errors="replace")

    def wait_for(self, condition, timeout: float, what: str) -> None:
        """Poll ``condition()`` until it is true.

        Raises:
            TimeoutError: ``what`` did not happen within ``timeout`` seconds; the message has the statuses.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(POLL_INTERVAL)
        raise TimeoutError(f"pod {self.spec.name}: {what} did not happen within {timeout:.0f} s; {self.describe()}")

    def describe(self) -> str:
        """Return one line per container: name, state, restarts and exit codes."""
        with self._lock:
            return "; ".join(f"{s.name} {s.state} restarts={s.restarts} exits={s.exit_codes}"
                             for s in self.statuses.values())

    def delete(self) -> None:
        """Stop the supervisor, remove every container, the pause container, emptyDir volumes and created paths."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for status in self.statuses.values():
            if status.id:
                _remove_container(self.client, status.id, self.spec.grace_seconds)
        if self.pause is not None:
            _remove_container(self.client, self.pause.id, 1)
        for volume in self._volumes_to_remove():
            try:
                self.client.volumes.get(volume).remove(force=True)
            except docker.errors.NotFound:
                pass
        for path in self._created_paths:
            self.node.remove_path(path)
        log.info("pod %s: deleted", self.spec.name)
        self.client.close()

    def _volumes_to_remove(self) -> list[str]:
        empty_dirs = {volume.name for volume in self.spec.volumes if volume.kind == "emptyDir"}
        return [docker_name for name, docker_name in self._volumes.items() if name in empty_dirs]


def _remove_container(client: docker.DockerClient, container_id: str, grace: int) -> None:
    """Stop a container with its grace period, then remove it with its anonymous volumes.

    A timed-out or failed stop is logged and followed by a forced removal, so the pod never stays.
    """
    try:
        client.api.stop(container_id, timeout=grace)
    except docker.errors.NotFound:
        return
    except (docker.errors.APIError, requests.exceptions.RequestException) as error:
        log.warning("container %s did not stop within %d s (%s); removing it by force", container_id[:12], grace, error)
    try:
        client.api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
