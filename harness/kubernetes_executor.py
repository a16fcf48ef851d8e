"""Job pods as GitLab Runner's Kubernetes executor lays them out, run with :class:`harness.kubernetes.Pod`.

One pod per job: ``build`` (the job image), ``helper`` (the helper image) and ``svc-<i>`` per
service, all in one network namespace, with ``restartPolicy: Never``. Service aliases are written
as ``hostAliases`` to ``127.0.0.1``, so both ``tcp://docker:2375`` and ``tcp://localhost:2375``
reach a dind service. Older runners wrote no hostAliases (``write_host_aliases=False``), which
left only ``localhost`` working. The runner waits for a
service only when its variables set ``HEALTHCHECK_TCP_PORT``; otherwise the script starts as soon
as every container runs. Registry names and certificates reach the pod as the runner's
``host_aliases`` and ``host_path`` volumes would bring them.

Compact on purpose: sources are copied into the ``/builds`` emptyDir instead of cloned, and
artifacts, caches and ``after_script`` are not run.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import posixpath
import secrets
import tarfile
import time
from pathlib import Path

import docker

from harness.executor import naming
from harness.executor.script import export_lines, user_script_body, wrap
from harness.kubernetes import API_TIMEOUT, PAUSE_IMAGE, Pod
from harness.kubernetes_node import Node, local_node, snapshot_node
from harness.kubernetes_spec import Container, Mount, PodSpec, Volume
from harness.placement import Snapshot, snapshot_dind
from harness.registry_trust import Wiring
from harness.variables import Variable, mask, masked_values

log = logging.getLogger(__name__)

HELPER_IMAGE = "dind-dood-harness/helper:latest"
BUILDS_DIR = "/builds"
# The build and helper containers only wait; the runner execs every stage into them.
IDLE_COMMAND = ("sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done")
HEALTH_CHECK_TIMEOUT = 30


@dataclasses.dataclass
class JobPodResult:
    """One job's outcome in its pod: status, exit code, trace, health-check wait and snapshots."""

    name: str
    status: str
    exit_code: int
    trace: str
    duration: float
    waited_for: list[str]
    snapshots: list[Snapshot]


@dataclasses.dataclass
class KubernetesExecutor:
    """The settings of ``[runners.kubernetes]`` the emulation honours.

    Attributes:
        privileged: ``privileged = true`` for every container of the pod, as the runner sets it.
        wiring: registry names and certificate binds, turned into hostAliases and hostPath volumes.
        write_host_aliases: False reproduces runners that did not write service aliases.
        empty_dirs: ``(name, mount path)`` of ``[[runners.kubernetes.volumes.empty_dir]]``, mounted
            in every container of the pod, such as ``/certs/client`` shared with a dind service.
        node: the node the pods run on, such as the session's sandbox host; None is the real
            engine behind ``client``.
    """

    client: docker.DockerClient
    privileged: bool = True
    wiring: Wiring = Wiring()
    write_host_aliases: bool = True
    helper_image: str = HELPER_IMAGE
    empty_dirs: tuple[tuple[str, str], ...] = ()
    node: Node | None = None

    def __post_init__(self) -> None:
        self.node = self.node or local_node(self.client)
        # The node's engine with the pod runner's longer request timeout, for snapshots under load.
        self.client = self.node.connect(API_TIMEOUT)

    def pod_spec(self, payload: dict) -> tuple[PodSpec, str]:
        """Return the job's pod and the project directory inside it."""
        variables = [Variable.from_payload(entry) for entry in payload["variables"]]
        env = tuple((v.key, v.value) for v in variables if not v.file)
        project_dir = posixpath.join(BUILDS_DIR, _project_path(payload))
        host_volumes, host_mounts = self._wiring_volumes()
        host_volumes += tuple(Volume(name, "emptyDir") for name, _ in self.empty_dirs)
        host_mounts += tuple(Mount(name, path) for name, path in self.empty_dirs)
        repo = Mount("repo", BUILDS_DIR)

        containers = [
            Container("build", payload["image"]["name"], command=IDLE_COMMAND, args=(), env=env,
                      privileged=self.privileged, mounts=(repo, *host_mounts)),
            Container("helper", self.helper_image, command=IDLE_COMMAND, args=(), env=env,
                      privileged=self.privileged, mounts=(repo, *host_mounts)),
        ]
        aliases: list[str] = []
        for index, service in enumerate(payload.get("services") or ()):
            service_env = env + tuple((v["key"], str(v.get("value", ""))) for v in service.get("variables") or ())
            containers.append(Container(
                f"svc-{index}", service["name"], command=tuple(service.get("entrypoint") or ()) or None,
                args=tuple(service.get("command") or ()) or None, env=service_env,
                privileged=self.privileged, mounts=host_mounts))
            aliases += [a for a in naming.service_aliases(service["name"], service.get("alias")) if a not in aliases]

        host_aliases = tuple((alias, "127.0.0.1") for alias in aliases) if self.write_host_aliases else ()
        host_aliases += tuple(tuple(entry.split(":", 1)) for entry in self.wiring.extra_hosts)
        name = f"runner-{payload['job_info']['project_id']}-job-{payload['id']}-{secrets.token_hex(3)}"
        spec = PodSpec(name=name, containers=tuple(containers), restart_policy="Never",
                       volumes=(Volume("repo", "emptyDir"), *host_volumes), host_aliases=host_aliases,
                       grace_seconds=1, source=f"job {payload['job_info']['name']}")
        return spec, project_dir

    def _wiring_volumes(self) -> tuple[tuple[Volume, ...], tuple[Mount, ...]]:
        volumes, mounts = [], []
        for index, entry in enumerate(self.wiring.volumes):
            host, inside, *mode = entry.split(":")
            volumes.append(Volume(f"host-path-{index}", "hostPath", host))
            mounts.append(Mount(f"host-path-{index}", inside, read_only="ro" in mode))
        return tuple(volumes), tuple(mounts)

    def run_job(self, payload: dict, sources: Path) -> JobPodResult:
        """Create the job's pod, wait for health-checked services, run the script, read daemons, delete it."""
        spec, project_dir = self.pod_spec(payload)
        name = payload["job_info"]["name"]
        secrets_ = masked_values(payload["variables"])
        started = time.monotonic()
        self.node.seed(list(dict.fromkeys([PAUSE_IMAGE, *(container.image for container in spec.containers)])))
        with Pod(self.client, spec, node=self.node) as pod:
            pod.wait_for(lambda: all(s.state == "running" for s in pod.statuses.values()), 30, "all containers running")
            waited = self._wait_for_services(pod, spec)
            _copy_sources(pod, sources, project_dir)
            code, output = pod.exec("build", ["sh", "-c", self._script(payload, project_dir)])
            snapshots = self._observe(pod, spec, name)
        status = "success" if code == 0 else "failed"
        log.info("job %s in pod %s: %s (exit %d)", name, spec.name, status, code)
        return JobPodResult(name, status, code, mask(output, secrets_), time.monotonic() - started, waited, snapshots)

    def _wait_for_services(self, pod: Pod, spec: PodSpec) -> list[str]:
        """Wait on ``HEALTHCHECK_TCP_PORT`` of each service that sets it, from the helper container."""
        waited = []
        for container in spec.containers[2:]:
            port = dict(container.env).get("HEALTHCHECK_TCP_PORT")
            if not port:
                continue
            probe = (f"end=$(( $(date +%s) + {HEALTH_CHECK_TIMEOUT} )); "
                     f"until (exec 3<>/dev/tcp/127.0.0.1/{int(port)}) 2>/dev/null; do "
                     f"[ $(date +%s) -ge $end ] && exit 1; sleep 0.5; done")
            code, _ = pod.exec("helper", ["bash", "-c", probe])
            if code != 0:
                log.warning("service %s did not open port %s within %d s", container.name, port, HEALTH_CHECK_TIMEOUT)
            waited.append(container.name)
        return waited

    def _script(self, payload: dict, project_dir: str) -> str:
        variables = [Variable.from_payload(entry) for entry in payload["variables"]]
        variables += [Variable("CI_PROJECT_DIR", project_dir), Variable("CI_BUILDS_DIR", BUILDS_DIR)]
        exports = export_lines(((v.key, v.value, v.file) for v in variables), f"{project_dir}.tmp")
        commands = payload["steps"][0]["script"]
        return wrap(user_script_body(exports, project_dir, commands))

    def _observe(self, pod: Pod, spec: PodSpec, job: str) -> list[Snapshot]:
        """Read the node's engine and each dind service's daemon before the pod is deleted."""
        snapshots = [snapshot_node(self.client, f"after {job}")]
        for container in spec.containers[2:]:
            if "dind" in container.image:
                snapshots.append(snapshot_dind(self.client, pod.statuses[container.name].id, f"dind:{job}", f"after {job}"))
        return snapshots


def _project_path(payload: dict) -> str:
    url = payload["git_info"]["repo_url"]
    path = url.split("://", 1)[-1].split("/", 1)[-1]
    return path[:-4] if path.endswith(".git") else path


def _copy_sources(pod: Pod, sources: Path, project_dir: str) -> None:
    """Copy the project's work tree into the pod's ``/builds`` emptyDir through the helper."""
    pod.exec("helper", ["mkdir", "-p", project_dir])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(str(sources), arcname=".")
    pod.container("helper").put_archive(project_dir, buffer.getvalue())
