"""A scenario's pipeline run with the Kubernetes executor's job pods instead of the docker executor.

The registry and the pull mirror are the same as in a docker-executor run. Their names and
certificates reach each job pod as ``hostAliases`` and ``hostPath`` volumes. On a sandbox node
both run on the real engine's infrastructure network, as in a docker-executor run on a sandbox.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import tempfile
from pathlib import Path

import docker

from harness.host import HostEngine
from harness.kubernetes import API_TIMEOUT
from harness.kubernetes_node import Node, snapshot_node
from harness.kubernetes_executor import JobPodResult, KubernetesExecutor
from harness.pipeline import compile_pipeline, load_pipeline
from harness.placement import Placement
from harness.project import Project
from harness.registry import Mirror, Registry, shared_mirror
from harness.scenario import Scenario
from harness.variables import Variable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class K8sPipelineResult:
    """Jobs, placement and the registry's tags of one pipeline run in job pods."""

    scenario: str
    jobs: list[JobPodResult]
    placement: Placement
    registry_tags: dict[str, list[str]]

    def job(self, name: str) -> JobPodResult:
        """Return the result of job ``name``; raises KeyError when it did not run."""
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)


def run_pipeline_in_pods(client: docker.DockerClient, scenario: Scenario, mode: str = "dind",
                         variables: tuple[Variable, ...] = (), host: HostEngine | None = None) -> K8sPipelineResult:
    """Run every job of ``scenario``'s ``mode`` pipeline in its own job pod, in stage order.

    The pods run on ``host`` (None: the real engine behind ``client``). A failed job stops the
    later stages, as GitLab does without ``allow_failure``.
    """
    node = Node(host or HostEngine.local(client))
    files = scenario.mode_files(mode)
    # Pushing node:18 to the mirror takes longer than the harness client's 5 s on a loaded engine.
    client = docker.from_env(timeout=API_TIMEOUT)
    with contextlib.ExitStack() as stack:
        stack.callback(client.close)
        work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="harness-project-"))
        project = Project.from_directory(scenario.project_dir, scenario.namespace, scenario.project_name,
                                         branch=scenario.branch, work_dir=Path(work_dir))
        registry_variables, executor, registry = _registry(client, scenario, stack, node)
        compiled = compile_pipeline(load_pipeline(files.pipeline), project, branch=scenario.branch,
                                    variables=[*registry_variables, *variables])

        baseline = snapshot_node(executor.client, "before the pipeline")
        jobs: list[JobPodResult] = []
        for stage in compiled.stages:
            for job in (j for j in compiled.jobs if j.stage == stage):
                if jobs and jobs[-1].status != "success":
                    break
                jobs.append(executor.run_job(job.payload, project.repo_dir))
        snapshots = [snapshot for job in jobs for snapshot in job.snapshots]
        tags = registry.tags() if registry is not None else {}
        return K8sPipelineResult(scenario.name, jobs, Placement("k8s", baseline, snapshots), tags)


def _registry(client: docker.DockerClient, scenario: Scenario, stack: contextlib.ExitStack, node: Node):
    """Start the scenario's registry and the pull mirror; return job variables, executor, registry.

    A sandbox node gets its host's shared mirror, and the registry on the host's network.
    """
    if node.sandbox is not None:
        mirror = shared_mirror(node.host.real_client, node.host.network)
    else:
        mirror = stack.enter_context(Mirror(client))
    wiring = mirror.wiring()
    spec = scenario.registry
    if spec is None:
        return [], KubernetesExecutor(client, wiring=wiring, node=node), None
    registry = stack.enter_context(Registry(client).with_network(node.host.network)
                                   .with_hostnames([spec.hostname])
                                   .with_auth(username=f"ci-{secrets.token_hex(4)}"))
    variables = [Variable(spec.user_variable, registry.username, masked=True, public=False),
                 Variable(spec.password_variable, registry.password, masked=True, public=False),
                 Variable(spec.address_variable, spec.hostname, masked=False, public=False)]
    return variables, KubernetesExecutor(client, wiring=wiring + registry.wiring(), node=node), registry


def run_folder_pipeline(client: docker.DockerClient, folder: Path, executor: KubernetesExecutor,
                        variables: tuple[Variable, ...] = ()) -> list[JobPodResult]:
    """Run the ``.gitlab-ci.yml`` of ``folder`` (also the project's files) in job pods, without a registry."""
    with tempfile.TemporaryDirectory(prefix="harness-project-") as work_dir:
        project = Project.from_directory(folder, "harness", folder.name, work_dir=Path(work_dir))
        compiled = compile_pipeline(load_pipeline(folder / ".gitlab-ci.yml"), project, variables=list(variables))
        return [executor.run_job(job.payload, project.repo_dir) for job in compiled.jobs]
