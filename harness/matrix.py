"""The nightly matrix: one scenario over mode x engine version x GitLab Runner generation.

Each cell is a real ``run_scenario`` with the jobs' docker images replaced by one engine line's
(``harness.engine_lines``) and the executor imitating one runner version
(``harness.executor.compat``). DinD cells run in parallel worker processes
(``harness.matrix_worker``): each worker is its own harness session with its own registry
wiring and pull mirror, because one session serves a registry hostname only once. Each worker
runs its cells on its own sandbox host engine unless ``host_engine`` is ``local``. DooD cells
run one at a time afterwards in one more worker, because on a ``local`` host their jobs act on
the real engine itself, where container names and host ports of parallel runs would collide.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker

from harness import images
from harness.engine_lines import ENGINE_LINES, PLAIN_TCP_DELAY_SECONDS, EngineLine, engine_line
from harness.errors import HarnessError, InputError, MatrixError
from harness.host import HostEngine
from harness.executor.compat import CURRENT_VERSION, RunnerCompat
from harness.placement import HOST
from harness.run import RunOptions, RunResult, check_inputs, run_scenario
from harness.scenario import Scenario

log = logging.getLogger(__name__)

# The oldest generation differs in every reproduced behaviour: a container per stage, --link,
# cache volumes without the hash-based name. The current one in none.
DEFAULT_RUNNER_VERSIONS = ("15.11.0", CURRENT_VERSION)
_workers: set[subprocess.Popen] = set()
_workers_lock = threading.Lock()


@dataclass(frozen=True)
class Cell:
    """One combination of the matrix."""

    scenario: str
    mode: str
    engine: EngineLine
    runner_version: str

    @property
    def name(self) -> str:
        """``seed/dind/26.1/runner-15.11.0``: unique in a matrix, used as the JUnit case name."""
        return f"{self.scenario}/{self.mode}/{self.engine.name}/runner-{self.runner_version}"


@dataclass
class CellResult:
    """The outcome of one cell.

    Attributes:
        passed: Every job succeeded and every check of the engine line's behaviour held.
        problems: Why the cell failed, one sentence each.
        dind_ready: The slowest dind service's seconds from start to serving its API; None
            without a dind service.
        image_daemons: The daemons on which the pipeline's images appeared (``host``,
            ``dind:BuildImages`` ...).
    """

    cell: Cell
    passed: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    dind_ready: float | None = None
    dind_plain_tcp: bool | None = None
    image_daemons: list[str] = field(default_factory=list)
    jobs: list[tuple[str, str]] = field(default_factory=list)
    traces: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable copy, the cell given by its names."""
        data = asdict(self)
        data["cell"] = cell_to_dict(self.cell)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> CellResult:
        """Rebuild a result from :meth:`to_dict` output."""
        fields = {**data, "cell": cell_from_dict(data["cell"])}
        fields["jobs"] = [tuple(job) for job in data.get("jobs", [])]
        return cls(**fields)


def cell_to_dict(cell: Cell) -> dict:
    """Return ``cell`` as names: scenario, mode, engine line, runner version."""
    return {"scenario": cell.scenario, "mode": cell.mode, "engine": cell.engine.name,
            "runner_version": cell.runner_version}


def cell_from_dict(data: dict) -> Cell:
    """Rebuild a cell from :func:`cell_to_dict` output."""
    return Cell(data["scenario"], data["mode"], engine_line(data["engine"]), data["runner_version"])


def plan(scenario: Scenario, modes: list[str] | None = None, engines: list[str] | None = None,
         runner_versions: list[str] | None = None) -> list[Cell]:
    """Return every cell of ``scenario`` over the chosen modes, engine lines and runner versions.

    Raises:
        InputError: a mode, engine line or runner version is unknown or invalid.
    """
    chosen_modes = modes or list(scenario.modes)
    for mode in chosen_modes:
        scenario.mode_files(mode)
    lines = [engine_line(name) for name in engines] if engines else list(ENGINE_LINES)
    versions = list(runner_versions or DEFAULT_RUNNER_VERSIONS)
    for version in versions:
        _check_runner_version(version)
    return [Cell(scenario.name, mode, line, version)
            for mode in chosen_modes for line in lines for version in versions]


def _check_runner_version(version: str) -> None:
    try:
        RunnerCompat.for_version(version)
    except ValueError:
        raise InputError("--runner-compat", version, "not a GitLab Runner version",
                         "give MAJOR.MINOR.PATCH, such as 18.6.0") from None
    if not version[:1].isdigit():
        raise InputError("--runner-compat", version, "not a GitLab Runner version",
                         "give MAJOR.MINOR.PATCH, such as 18.6.0")


def ensure_cell_images(client: docker.DockerClient, cells: list[Cell]) -> None:
    """Build the default stand-ins and those of every engine line in ``cells``, where missing or stale."""
    images.ensure_images(client)
    recipes = sorted({recipe for cell in cells for recipe in cell.engine.recipes})
    images.ensure_images(client, recipes)


def run_matrix(client: docker.DockerClient, scenario: Scenario, cells: list[Cell], parallel: int = 2,
               jobs: tuple[str, ...] = (), host_engine: str = "sandbox") -> list[CellResult]:
    """Run every cell and return the results in the order of ``cells``.

    Every cell's inputs are checked before the first one starts. A cell that raises is a failed
    cell with the error as its problem; the other cells still run.

    Raises:
        InputError: a cell's pipeline or runner config is invalid; nothing has started then.
        MatrixError: a worker process died without writing its results.
    """
    for cell in cells:
        check_inputs(client, scenario, cell.mode, _options(cell, jobs))

    parallel_cells = [cell for cell in cells if scenario.mode_files(cell.mode).kind != "dood"]
    serial_cells = [cell for cell in cells if cell not in parallel_cells]
    workers = max(1, min(parallel, len(parallel_cells)))
    batches = [parallel_cells[index::workers] for index in range(workers)]

    results: dict[Cell, CellResult] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="matrix")
    try:
        for batch in pool.map(lambda batch: _run_worker(scenario, batch, jobs, host_engine), [b for b in batches if b]):
            results.update({result.cell: result for result in batch})
        if serial_cells:
            results.update({result.cell: result
                            for result in _run_worker(scenario, serial_cells, jobs, host_engine)})
    except BaseException:
        # Stopped before the pool waits for its threads, which wait for the workers.
        _stop_workers()
        raise
    finally:
        pool.shutdown(wait=True)
    return [results[cell] for cell in cells]


def _stop_workers() -> None:
    """Send SIGTERM to every running worker and wait for its teardown.

    Ctrl-C reaches the workers by itself, but a SIGTERM of the harness must be passed on.
    """
    with _workers_lock:
        running = list(_workers)
    for worker in running:
        worker.terminate()
    for worker in running:
        worker.wait()


def _run_worker(scenario: Scenario, cells: list[Cell], jobs: tuple[str, ...],
                host_engine: str = "sandbox") -> list[CellResult]:
    """Run ``cells`` one after another in a ``harness.matrix_worker`` process; return its results."""
    with tempfile.TemporaryDirectory(prefix="harness-matrix-") as directory:
        spec_path, result_path = Path(directory) / "cells.json", Path(directory) / "results.json"
        spec = {"scenario": str(scenario.folder), "jobs": list(jobs), "cells": [cell_to_dict(c) for c in cells],
                "host_engine": host_engine}
        spec_path.write_text(json.dumps(spec))
        log.info("matrix worker starting for %s", ", ".join(cell.name for cell in cells))
        # A session id inherited from a caller would make the workers one session again.
        environment = {key: value for key, value in os.environ.items()
                       if key not in ("HARNESS_SESSION_ID", "HARNESS_OWNER_PID")}
        worker = subprocess.Popen([sys.executable, "-m", "harness.matrix_worker", str(spec_path), str(result_path)],
                                  cwd=Path(__file__).resolve().parent.parent, env=environment)
        with _workers_lock:
            _workers.add(worker)
        try:
            returncode = worker.wait()
        finally:
            with _workers_lock:
                _workers.discard(worker)
        if not result_path.exists():
            raise MatrixError(f"the matrix worker for {cells[0].name} and {len(cells) - 1} more cells exited "
                              f"with status {returncode} and wrote no results; its log is above")
        return [CellResult.from_dict(data) for data in json.loads(result_path.read_text())]


def _options(cell: Cell, jobs: tuple[str, ...] = (), host: HostEngine | None = None) -> RunOptions:
    return RunOptions(jobs=tuple(jobs), runner_version=cell.runner_version, engine_line=cell.engine, host=host)


def run_cell(client: docker.DockerClient, scenario: Scenario, cell: Cell, jobs: tuple[str, ...] = (),
             host: HostEngine | None = None) -> CellResult:
    """Run one cell in this process on ``host`` (None: the real engine) and judge it.

    An error of the run becomes a failed result.
    """
    log.info("matrix cell %s starting", cell.name)
    started = time.monotonic()
    try:
        run = run_scenario(client, scenario, cell.mode, _options(cell, jobs, host))
    except (HarnessError, docker.errors.DockerException) as error:
        result = CellResult(cell, problems=[f"the run failed: {error}"])
    else:
        result = judge(cell, run)
    result.seconds = round(time.monotonic() - started, 1)
    log.info("matrix cell %s %s in %.1f s", cell.name, "passed" if result.passed else "failed", result.seconds)
    return result


def judge(cell: Cell, run: RunResult) -> CellResult:
    """Turn a run into a cell result and check the engine line's start behaviour against it.

    A dind daemon on plain TCP must wait ``PLAIN_TCP_DELAY_SECONDS`` exactly on the lines that
    have that delay, and a line without TLS by default must run plain TCP unless a job set
    ``DOCKER_TLS_CERTDIR``.
    """
    result = CellResult(cell)
    result.jobs = [(job.name, job.status) for job in run.jobs]
    result.traces = {job.name: job.trace for job in run.jobs}
    result.problems += [f"job {job.name} {job.status}" for job in run.jobs if job.status not in ("success", "skipped")]
    # NOTE: "host" counts images that appeared on the host during the run, also those of other
    # processes on a shared engine. A DooD build whose image the host already has under the same
    # tag (a cache hit gives the same id) adds nothing, so such a cell shows no host image.
    result.image_daemons = sorted({row.daemon for row in run.placement.appearances() if row.kind == "image"},
                                  key=lambda daemon: (daemon != HOST, daemon))

    starts = [snapshot.start for snapshot in run.placement.snapshots if snapshot.start]
    if starts:
        ready = [start["ready_seconds"] for start in starts if start["ready_seconds"] is not None]
        result.dind_ready = max(ready) if ready else None
        result.dind_plain_tcp = any(start["plain_tcp"] for start in starts)
        result.problems += _start_problems(cell.engine, starts)
    result.passed = not result.problems
    return result


def _start_problems(line: EngineLine, starts: list[dict]) -> list[str]:
    problems = []
    for start in starts:
        expect_delay = start["plain_tcp"] and line.plain_tcp_delayed
        if start["slowed_down"] != expect_delay:
            problems.append(f"dind {line.name} on {'plain TCP' if start['plain_tcp'] else 'TLS'} "
                            f"{'did not delay' if expect_delay else 'delayed'} its start, unlike the official image")
        ready = start["ready_seconds"]
        if expect_delay and ready is not None and ready < PLAIN_TCP_DELAY_SECONDS:
            problems.append(f"dind {line.name} served plain TCP after {ready} s, before the "
                            f"{PLAIN_TCP_DELAY_SECONDS} s delay")
    return problems
