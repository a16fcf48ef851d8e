"""The runner container: where the docker executor runs, as a gitlab-runner container does.

It is started on the host engine with the host's Docker socket mounted, so the executor inside
creates build and service containers as siblings on the host engine, and paths in the runner
config (``volumes``, ``cache_dir``) resolve on the host. The harness package is bind-mounted
read-only at ``/opt/harness``; the image only brings Debian's Python and docker-py.

``InProcessRunner`` runs the same executor inside this process instead (``--debug-in-process``),
for stepping through it with a debugger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Protocol

import docker
import docker.errors

from harness import labels
from harness.engine import state_dir
from harness.variables import mask, masked_values

log = logging.getLogger(__name__)

RUNNER_IMAGE = "dind-dood-harness/runner:latest"
PACKAGE_DIR = Path(__file__).resolve().parent
WORK_MOUNT = "/var/lib/harness-runner"
SOCKET = "/var/run/docker.sock"
BYTECODE_MOUNT = "/var/cache/harness-pycache"


def bytecode_cache_dir() -> Path:
    """Return (and create) the directory where the runner container's Python keeps compiled modules.

    The package is mounted read-only, so without this every job's ``docker exec`` compiled the
    executor's modules again (about 1 s on two busy cores). Python checks each cached file against
    its source's mtime and size, and this path differs per package directory, so a changed source
    is compiled again and two checkouts never share entries.
    """
    digest = hashlib.sha256(str(PACKAGE_DIR).encode()).hexdigest()[:16]
    path = state_dir() / "runner-pycache" / digest
    path.mkdir(parents=True, exist_ok=True)
    return path


class JobRunner(Protocol):
    """Runs one job payload and returns the executor's result dictionary."""

    def run_job(self, payload: dict, on_trace: Callable[[str], None], concurrent_id: int = 0) -> dict: ...

    def close(self) -> None: ...


def _render_toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_render_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_toml(data: dict, prefix: str = "") -> str:
    """Write a nested dict of strings, numbers, booleans, lists and tables as TOML.

    Lists of tables become ``[[name]]`` arrays, as ``[[runners]]`` in a runner config. Keys whose
    value is None are left out, as the runner treats a missing key as unset.
    """
    lines, tables = [], []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value, False))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            tables.append((key, value, True))
        else:
            lines.append(f"{key} = {_render_toml_value(value)}")

    for key, value, is_array in tables:
        name = f"{prefix}{key}"
        for table in (value if is_array else [value]):
            header = f"[[{name}]]" if is_array else f"[{name}]"
            lines.append(f"\n{header}\n{render_toml(table, name + '.')}".rstrip())
    return "\n".join(lines) + "\n"


class RunnerContainer:
    """A long-lived runner container that runs jobs with ``python3 -m harness.executor``.

    Starting it creates one container on the host engine, labelled as type ``runner``; ``close``
    removes it. Jobs run one after another through ``docker exec``.
    """

    def __init__(self, client: docker.DockerClient, config_toml: str, sources: Path,
                 watch_paths: tuple[str, ...] = (), image: str = RUNNER_IMAGE,
                 runner_version: str | None = None) -> None:
        self.client = client
        self.image = image
        self.runner_version = runner_version
        self.watch_paths = tuple(watch_paths)
        self.sources = sources
        self.work_dir = Path(tempfile.mkdtemp(prefix=labels.temp_prefix("runner")))
        (self.work_dir / "config.toml").write_text(config_toml)
        self.container = None

    def start(self) -> "RunnerContainer":
        """Create and start the runner container (``docker run -d`` with the socket mounted)."""
        volumes = {
            SOCKET: {"bind": SOCKET, "mode": "rw"},
            str(PACKAGE_DIR): {"bind": "/opt/harness/harness", "mode": "ro"},
            str(self.work_dir): {"bind": WORK_MOUNT, "mode": "rw"},
            str(self.sources): {"bind": "/var/lib/harness-sources", "mode": "ro"},
            str(bytecode_cache_dir()): {"bind": BYTECODE_MOUNT, "mode": "rw"},
        }
        environment = {"PYTHONPATH": "/opt/harness", "HARNESS_SESSION_ID": labels.session_id(),
                       "HARNESS_OWNER_PID": labels.owner_pid(), "PYTHONUNBUFFERED": "1",
                       "PYTHONPYCACHEPREFIX": BYTECODE_MOUNT}
        self.container = self.client.containers.run(
            self.image, ["sleep", "infinity"], detach=True, volumes=volumes, environment=environment,
            labels=labels.managed_labels("runner"), name=f"harness-runner-{labels.session_id()}-{os.getpid()}",
            init=True)
        log.info("runner container %s started on the host engine", self.container.name)
        return self

    def run_job(self, payload: dict, on_trace: Callable[[str], None], concurrent_id: int = 0) -> dict:
        """Run one job in the runner container; stream its trace to ``on_trace``; return the result.

        Jobs may run at the same time from several threads, each in its own ``docker exec`` and
        with its own ``concurrent_id``.
        """
        job_id = payload["id"]
        (self.work_dir / f"job-{job_id}.json").write_text(json.dumps(payload))
        command = ["python3", "-m", "harness.executor", "--config", f"{WORK_MOUNT}/config.toml",
                   "--job", f"{WORK_MOUNT}/job-{job_id}.json", "--sources", "/var/lib/harness-sources",
                   "--result", f"{WORK_MOUNT}/result-{job_id}.json", "--concurrent-id", str(concurrent_id)]
        for path in self.watch_paths:
            command += ["--watch", path]
        if self.runner_version:
            command += ["--runner-version", self.runner_version]
        execution = self.client.api.exec_create(self.container.id, command)
        secrets = masked_values(payload.get("variables", []))
        # The trace is the executor's stdout; its stderr carries the executor's own log lines,
        # which belong in the harness log, not in the job's trace. Those can quote a failing
        # Docker request, so they are masked like the trace.
        for stdout, stderr in self.client.api.exec_start(execution["Id"], stream=True, demux=True):
            if stdout:
                on_trace(stdout.decode(errors="replace"))
            if stderr:
                for line in mask(stderr.decode(errors="replace"), secrets).splitlines():
                    log.warning("executor in %s: %s", self.container.name, line)

        exit_code = self.client.api.exec_inspect(execution["Id"])["ExitCode"]
        result_path = self.work_dir / f"result-{job_id}.json"
        if not result_path.exists():
            raise RuntimeError(f"the executor in {self.container.name} exited with {exit_code} "
                               "and wrote no result; its output is in the job trace")
        return json.loads(result_path.read_text())

    def close(self) -> None:
        """Remove the runner container and its work directory."""
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except docker.errors.NotFound:
                pass
            log.debug("runner container %s removed", self.container.name)
            self.container = None
        shutil.rmtree(self.work_dir, ignore_errors=True)


class InProcessRunner:
    """Runs the executor inside this Python process, against the same engine (for debugging)."""

    def __init__(self, client: docker.DockerClient, config_toml: str, sources: Path,
                 watch_paths: tuple[str, ...] = (), runner_version: str | None = None) -> None:
        self.client = client
        self.sources = sources
        self.runner_version = runner_version
        self.watch_paths = tuple(watch_paths)
        self.work_dir = Path(tempfile.mkdtemp(prefix=labels.temp_prefix("runner")))
        self.config_path = self.work_dir / "config.toml"
        self.config_path.write_text(config_toml)

    def start(self) -> "InProcessRunner":
        """Nothing to start: the executor is imported on first use."""
        return self

    def run_job(self, payload: dict, on_trace: Callable[[str], None], concurrent_id: int = 0) -> dict:
        """Run one job in this process; return the same result dictionary the container writes."""
        from harness.executor.__main__ import run_payload
        from harness.executor.compat import RunnerCompat

        compat = RunnerCompat.for_version(self.runner_version) if self.runner_version else None
        return run_payload(self.client, self.config_path, payload, self.sources, _TraceWriter(on_trace),
                           compat=compat, watch_paths=self.watch_paths, concurrent_id=concurrent_id)

    def close(self) -> None:
        """Remove the temporary work directory."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


class _TraceWriter:
    """A text stream that forwards writes to a callback."""

    def __init__(self, on_trace: Callable[[str], None]) -> None:
        self.on_trace = on_trace

    def write(self, text: str) -> int:
        self.on_trace(text)
        return len(text)

    def flush(self) -> None:
        pass
