"""The runner container: where the docker executor runs, as a gitlab-runner container does.

It is started on the host engine with the host's Docker socket mounted, so the executor inside
creates build and service containers as siblings on the host engine, and paths in the runner
config (``volumes``, ``cache_dir``) resolve on the host. The harness package is bind-mounted
read-only at ``/opt/harness``; the image only brings Debian's Python and docker-py.

The runner takes its jobs from the run's coordinator over GitLab's job API
(``harness.runner_loop``). ``InProcessRunner`` runs the same loop in a thread of this process
instead (``--debug-in-process``), for stepping through the executor with a debugger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Protocol

import docker
import docker.errors

from harness import labels
from harness.engine import state_dir

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
    """A runner that takes jobs from a coordinator until ``close``."""

    def start(self) -> "JobRunner": ...

    def check(self) -> None: ...

    def close(self) -> None: ...


class RunnerStopped(RuntimeError):
    """The runner ended while the pipeline still had jobs for it."""


def image_exists(client: docker.DockerClient, reference: str) -> bool:
    """Return whether the engine behind ``client`` has the image ``reference`` (no pull is tried)."""
    from harness.placement import normalize_reference

    try:
        client.images.get(normalize_reference(reference))
    except docker.errors.ImageNotFound:
        return False
    return True


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


class ContainerRunner:
    """A runner container on the host engine and its temporary work directory with ``config.toml``.

    Subclasses choose the image and command; this class creates the container labelled as type
    ``runner``, reports when it exited on its own and removes it with the work directory.
    """

    def __init__(self, client: docker.DockerClient, config_toml: str, image: str) -> None:
        self.client = client
        self.image = image
        self.work_dir = Path(tempfile.mkdtemp(prefix=labels.temp_prefix("runner")))
        (self.work_dir / "config.toml").write_text(config_toml)
        self.container = None

    def _run(self, command: list[str], volumes: dict, environment: dict[str, str]) -> None:
        """Create and start the container (``docker run -d``) with ``command``."""
        self.container = self.client.containers.run(
            self.image, command, detach=True, volumes=volumes, environment=environment,
            labels=labels.managed_labels("runner"), name=f"harness-runner-{labels.session_id()}-{os.getpid()}",
            init=True)
        log.info("runner container %s (%s) started on the host engine", self.container.name, self.image)

    def check(self) -> None:
        """Inspect the container and raise when it is no longer running.

        Raises:
            RunnerStopped: the container exited; the message has its exit code and last log line.
        """
        self.container.reload()
        state = self.container.attrs["State"]
        if state.get("Running"):
            return
        last_line = (self.logs(tail=1).strip().splitlines() or [""])[-1]
        raise RunnerStopped(f"runner container {self.container.name} exited with code {state.get('ExitCode')} "
                            f"while the pipeline still had jobs; its last log line: {last_line}")

    def logs(self, tail: int | str = "all") -> str:
        """Return the container's output (the runner's own log, not job traces)."""
        if self.container is None:
            return ""
        return self.container.logs(tail=tail).decode(errors="replace")

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


class RunnerContainer(ContainerRunner):
    """The harness's runner container: ``python3 -m harness.runner_loop`` against a coordinator.

    The container's main process polls the coordinator and runs each job with the docker
    executor. The host's socket is mounted, so job containers are siblings on the host engine.
    """

    def __init__(self, client: docker.DockerClient, config_toml: str, sources: Path, coordinator_url: str,
                 runner_token: str, watch_paths: tuple[str, ...] = (), image: str = RUNNER_IMAGE,
                 runner_version: str | None = None) -> None:
        super().__init__(client, config_toml, image)
        self.sources = sources
        self.coordinator_url = coordinator_url
        self.runner_token = runner_token
        self.watch_paths = tuple(watch_paths)
        self.runner_version = runner_version

    def start(self) -> "RunnerContainer":
        """Create and start the runner container with the socket mounted; it starts polling at once."""
        from harness.runner_loop import TOKEN_VARIABLE

        volumes = {
            SOCKET: {"bind": SOCKET, "mode": "rw"},
            str(PACKAGE_DIR): {"bind": "/opt/harness/harness", "mode": "ro"},
            str(self.work_dir): {"bind": WORK_MOUNT, "mode": "rw"},
            str(self.sources): {"bind": "/var/lib/harness-sources", "mode": "ro"},
            str(bytecode_cache_dir()): {"bind": BYTECODE_MOUNT, "mode": "rw"},
        }
        environment = {"PYTHONPATH": "/opt/harness", "HARNESS_SESSION_ID": labels.session_id(),
                       "HARNESS_OWNER_PID": labels.owner_pid(), "PYTHONUNBUFFERED": "1",
                       "PYTHONPYCACHEPREFIX": BYTECODE_MOUNT, TOKEN_VARIABLE: self.runner_token}
        command = ["python3", "-m", "harness.runner_loop", "--url", self.coordinator_url,
                   "--config", f"{WORK_MOUNT}/config.toml", "--sources", "/var/lib/harness-sources"]
        for path in self.watch_paths:
            command += ["--watch", path]
        if self.runner_version:
            command += ["--runner-version", self.runner_version]
        self._run(command, volumes, environment)
        return self


class InProcessRunner:
    """Runs the same job API client loop in a thread of this process (for debugging).

    The executor then works against the host engine from here, so a debugger can step through it.
    """

    def __init__(self, client: docker.DockerClient, config_toml: str, sources: Path, coordinator_url: str,
                 runner_token: str, watch_paths: tuple[str, ...] = (), runner_version: str | None = None) -> None:
        self.client = client
        self.sources = sources
        self.coordinator_url = coordinator_url
        self.runner_token = runner_token
        self.runner_version = runner_version
        self.watch_paths = tuple(watch_paths)
        self.work_dir = Path(tempfile.mkdtemp(prefix=labels.temp_prefix("runner")))
        self.config_path = self.work_dir / "config.toml"
        self.config_path.write_text(config_toml)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> "InProcessRunner":
        """Start polling the coordinator in a daemon thread."""
        from harness.runner_api import JobApi
        from harness.runner_config import load_runner_config
        from harness.runner_loop import executor_for, serve

        execute = executor_for(self.client, self.config_path, self.sources, self.watch_paths, self.runner_version)
        slots = load_runner_config(self.config_path).concurrent
        api = JobApi(self.coordinator_url, self.runner_token)
        self.thread = threading.Thread(target=serve, args=(api, execute, slots, self.stop),
                                       name="in-process-runner", daemon=True)
        self.thread.start()
        return self

    def check(self) -> None:
        """Raise when the polling thread ended although ``close`` was not called.

        Raises:
            RunnerStopped: the thread ended; the reason is in this process's log.
        """
        if self.thread is not None and not self.thread.is_alive() and not self.stop.is_set():
            raise RunnerStopped("the in-process runner stopped while the pipeline still had jobs; "
                                "its reason is in the log above")

    def logs(self, tail: int | str = "all") -> str:
        """Return "": the in-process runner logs to this process's log directly."""
        return ""

    def close(self) -> None:
        """Stop polling, wait for a running job to end, and remove the temporary work directory."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
            if self.thread.is_alive():
                log.warning("the in-process runner is still running a job after 60 s; it is left to end")
        shutil.rmtree(self.work_dir, ignore_errors=True)
