"""pytest plugin of dind-dood-harness: markers, options and fixtures.

Fixtures fail, never skip, when the engine is down: a suite that silently skips every
integration test would report green on a broken machine.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import docker

MARKERS = {
    "engine": "needs the provisioned Docker engine",
    "images": "needs the stand-in images",
    "registry": "needs the local registry",
    "dind": "runs jobs with a docker:dind service",
    "dood": "runs jobs with the host socket mounted",
    "k8s": "runs Kubernetes pod shapes on the engine",
    "slow": "takes more than a minute",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")

    from harness import labels

    problem = labels.session_id_problem()
    if problem:
        raise pytest.UsageError(problem)

    # Every pytest-xdist worker is a session of its own with its own random id. Workers inherit
    # the environment, so a given id would make them one session, and the first worker to finish
    # would remove the others' live resources at its teardown.
    if config.getoption("numprocesses", default=None) and os.environ.get("HARNESS_SESSION_ID"):
        raise pytest.UsageError("HARNESS_SESSION_ID is set, so every pytest-xdist worker would share one "
                                "harness session; unset it or run without -n")

    # docker-py and every harness module read DOCKER_HOST, so one setting reaches them all.
    engine_url = config.getoption("--harness-engine", default=None)
    if engine_url:
        os.environ["DOCKER_HOST"] = engine_url

    # pytest dies on SIGTERM without tearing fixtures down. As KeyboardInterrupt the teardown runs,
    # so a CI job timeout or `kill` still removes the session's sandbox, registries and mirror.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    global _xdist_controller
    _xdist_controller = bool(config.getoption("numprocesses", default=None)) and not hasattr(config, "workerinput")


def _interrupt(signum, frame) -> None:
    global _terminated
    _terminated = True
    if _xdist_controller:
        _stop_workers()
    raise KeyboardInterrupt


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # A worker serves its controller until the controller sends it the exit command, which a
    # controller waiting in its SIGTERM handler cannot send. So the worker exits by itself here,
    # after its teardown.
    if _terminated and hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


# Whether this process is a pytest-xdist controller, whose child processes are its workers.
_xdist_controller = False
# Whether this process got SIGTERM.
_terminated = False
# How long a controller waits after SIGTERM for its workers to tear their sessions down.
WORKER_TEARDOWN_SECONDS = 180


def _stop_workers() -> None:
    """Send SIGTERM to this controller's pytest-xdist workers and wait until they have exited.

    A controller that gets SIGTERM alone kills its workers after 10 s (pytest-xdist 3.8), often
    before their teardown ends, so their sandboxes and registries would stay until the next
    session's sweep. Ctrl-C in a terminal reaches every worker by itself. Each worker exits
    after its teardown, in ``pytest_unconfigure``.
    """
    workers = _child_pids()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + WORKER_TEARDOWN_SECONDS
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)


def _child_pids() -> list[int]:
    """Return the pids of this process's children, read from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The command name in brackets may contain spaces, so the fields after it are split.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                children.append(int(stat.parent.name))
    return children


def _running(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="session")
def engine_client() -> Iterator[docker.DockerClient]:
    """A docker-py client for the engine at ``DOCKER_HOST`` or the default socket.

    Fails the test with the command that starts an engine when none responds.
    """
    from harness import engine
    from harness.errors import EngineError

    from harness import cleanup, labels

    try:
        client = engine.require_engine()
    except EngineError as error:
        pytest.fail(str(error), pytrace=False)

    cleanup.clean(client, dead_only=True)
    yield client
    cleanup.clean(client, session=labels.session_id())
    client.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dind-dood-harness")
    group.addoption("--harness-in-process", action="store_true",
                    help="run the executor in the pytest process instead of a runner container")
    group.addoption("--harness-engine", metavar="URL", default=None,
                    help="Docker engine to run on, e.g. unix:///var/run/docker.sock "
                         "(default: DOCKER_HOST or the default socket)")
    group.addoption("--harness-pull-policy", choices=["if-not-present", "never", "always"], default=None,
                    help="override every runner config's pull_policy (default: the config's own)")
    group.addoption("--harness-pipeline", action="append", default=[], metavar="[MODE=]PATH",
                    help="your .gitlab-ci.yml for the own_pipeline fixture; MODE=PATH once per mode")
    group.addoption("--harness-runner-config", action="append", default=[], metavar="[MODE=]PATH",
                    help="your runner config.toml for the own_pipeline fixture; dind=PATH and dood=PATH")
    group.addoption("--harness-project", metavar="DIR", default=None,
                    help="your project folder for the own_pipeline fixture (relative paths: to the rootdir)")
    group.addoption("--host-engine", choices=["sandbox", "local"], default="sandbox",
                    help="engine that plays the CI host in scenario runs: a disposable sandbox engine "
                         "per session in a privileged container (default), or the real engine, which "
                         "DooD jobs can then change")
    group.addoption("--harness-report", metavar="FILE.html", default=None,
                    help="write an HTML placement report of every pipeline run in the session")
    group.addoption("--dind-version", action="append", default=[], metavar="LINE",
                    help="engine line for tests that take the dind_version fixture, such as 26.1 "
                         "(repeatable; default: the harness's docker:dind line)")
    group.addoption("--runner-compat", action="append", default=[], metavar="VERSION",
                    help="GitLab Runner version for tests that take the runner_compat fixture, such as "
                         "15.11.0 (repeatable; default: the current runner)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``dind_version`` and ``runner_compat`` over the versions given on the command line."""
    from harness.engine_lines import DEFAULT_LINE, engine_line
    from harness.errors import InputError
    from harness.executor.compat import CURRENT_VERSION

    try:
        if "dind_version" in metafunc.fixturenames:
            names = metafunc.config.getoption("--dind-version") or [DEFAULT_LINE]
            lines = [engine_line(name) for name in dict.fromkeys(names)]
            metafunc.parametrize("dind_version", lines, ids=[f"engine-{line.name}" for line in lines])
    except InputError as error:
        raise pytest.UsageError(str(error)) from None
    if "runner_compat" in metafunc.fixturenames:
        versions = list(dict.fromkeys(metafunc.config.getoption("--runner-compat") or [CURRENT_VERSION]))
        metafunc.parametrize("runner_compat", versions, ids=[f"runner-{version}" for version in versions])


_RESULTS_KEY = pytest.StashKey[list]()
_RUNS_KEY = pytest.StashKey["ScenarioRuns"]()
_WORKER_RESULTS_KEY = pytest.StashKey[list]()
# The key of a worker's pickled runs in pytest-xdist's workeroutput.
_WORKER_RUNS = "dind-dood-harness-runs"


class ScenarioRuns:
    """Runs scenarios on demand and caches each (scenario, mode) result for the whole session.

    Several tests usually assert on one run of the same pipeline, so the pipeline runs once.
    """

    def __init__(self, client, config: pytest.Config, host) -> None:
        self.client = client
        self.config = config
        self.host = host
        self._cache: dict[tuple[str, str], object] = {}
        config.stash[_RUNS_KEY] = self

    def __call__(self, scenario: str, mode: str):
        from harness import run
        from harness.scenario import load_scenario

        key = (scenario, mode)
        if key not in self._cache:
            self._cache[key] = run.run_scenario(self.client, load_scenario(scenario), mode, self._options())
        return self._cache[key]

    def own(self, mode: str):
        """Run the pipeline named by ``--harness-pipeline`` and friends in ``mode``, once per session."""
        from harness import own_pipeline, run

        key = ("--harness-pipeline", mode)
        if key not in self._cache:
            scenario = own_pipeline.scenario_from_options(
                self.config.getoption("--harness-pipeline"), self.config.getoption("--harness-runner-config"),
                self.config.getoption("--harness-project"), self.config.rootpath, mode)
            self._cache[key] = run.run_scenario(self.client, scenario, mode, self._options())
        return self._cache[key]

    def results(self) -> list:
        """Return every run of this session, in the order they ran."""
        return list(self._cache.values())

    def _options(self):
        from harness import run

        return run.RunOptions(in_process=self.config.getoption("--harness-in-process"),
                              pull_policy=self.config.getoption("--harness-pull-policy"), host=self.host)


@pytest.fixture(scope="session")
def host_engine(engine_client, pytestconfig):
    """The engine that plays the CI host in scenario runs (a :class:`harness.host.HostEngine`).

    With ``--host-engine=sandbox`` (the default) it is a disposable engine in a privileged
    container, started once per session (once per xdist worker) and removed at its end, with
    everything DooD jobs left in it. With ``--host-engine=local`` it is the real engine, and the
    fixture warns that DooD jobs can change it.
    """
    from harness import host

    if pytestconfig.getoption("--host-engine") == "local":
        warnings.warn(host.LOCAL_WARNING, stacklevel=1)
        yield host.HostEngine.local(engine_client)
        return

    sandbox_host = host.open_sandbox(engine_client)
    yield sandbox_host
    sandbox_host.close()


@pytest.fixture(scope="session")
def scenario_runs(engine_client, host_engine, pytestconfig) -> ScenarioRuns:
    """A callable ``scenario_runs(name, mode) -> RunResult`` that runs each pair once per session."""
    return ScenarioRuns(engine_client, pytestconfig, host_engine)


@pytest.fixture
def run_scenario(scenario_runs, request):
    """Run (or reuse) a scenario in a mode; traces and placement are attached to a failing report.

    Example::

        def test_image_stays_in_dind(run_scenario):
            result = run_scenario("seed", "dind")
            result.placement.image("registry.example.com/app:1").only_in("dind")
    """
    def run(scenario: str, mode: str):
        return _used(request, scenario_runs(scenario, mode))

    return run


@pytest.fixture
def run_cell(engine_client, host_engine, request):
    """Run a scenario's mode as one matrix cell on the session's host: ``run_cell("seed", "dind") -> CellResult``.

    The engine line and runner version are the test's ``dind_version`` and ``runner_compat``
    parameters (from ``--dind-version`` and ``--runner-compat``); their images are built first.
    """
    from harness import matrix
    from harness.engine_lines import DEFAULT_LINE, engine_line
    from harness.executor.compat import CURRENT_VERSION
    from harness.scenario import load_scenario

    params = getattr(request.node, "callspec", None)
    params = params.params if params else {}
    line = params.get("dind_version") or engine_line(DEFAULT_LINE)
    version = params.get("runner_compat") or CURRENT_VERSION

    def run(scenario: str, mode: str, jobs: tuple[str, ...] = ()):
        loaded = load_scenario(scenario)
        cell = matrix.Cell(loaded.name, mode, line, version)
        matrix.ensure_cell_images(engine_client, [cell])
        return matrix.run_cell(engine_client, loaded, cell, jobs, host_engine)

    return run


@pytest.fixture
def own_pipeline(scenario_runs, request):
    """Run (or reuse) your own pipeline in a mode: ``own_pipeline("dind") -> RunResult``.

    The files come from ``--harness-pipeline``, ``--harness-runner-config`` and
    ``--harness-project``, for example in your repository's ``pytest.ini`` ``addopts``.
    """
    from harness.errors import InputError

    def run(mode: str):
        try:
            return _used(request, scenario_runs.own(mode))
        except InputError as error:
            pytest.fail(str(error), pytrace=False)

    return run


def _used(request, result):
    """Attach ``result`` to the test: traces on failure, placement as JUnit XML properties."""
    from harness.report import placement_properties

    used: list = request.node.stash.setdefault(_RESULTS_KEY, [])
    if result not in used:
        used.append(result)
        request.node.user_properties.extend(placement_properties(result))
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--harness-report", default=None)
    if not path:
        return
    runs = session.config.stash.get(_RUNS_KEY, None)
    results = runs.results() if runs is not None else []

    # A pytest-xdist worker hands its runs to the controller, which writes one report of all
    # workers' runs once they have finished.
    if hasattr(session.config, "workerinput"):
        session.config.workeroutput[_WORKER_RUNS] = pickle.dumps(results)
        return
    results += session.config.stash.get(_WORKER_RESULTS_KEY, [])
    if not results:
        return
    from harness.report import write_report

    write_report(results, session.config.rootpath / path, title="Placement report")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """Collect the runs of a finished pytest-xdist worker for the controller's placement report."""
    data = getattr(node, "workeroutput", {}).get(_WORKER_RUNS)
    if data:
        node.config.stash.setdefault(_WORKER_RESULTS_KEY, []).extend(pickle.loads(data))


@pytest.fixture
def run_pod(engine_client, host_engine):
    """A callable ``run_pod(manifest, backoff_scale=1.0) -> PodRun`` that starts a Pod manifest.

    The node is the session's host engine (``--host-engine``). Each pod, its emptyDir volumes,
    the pull mirror of a dind pod and what a DooD pod left on the node are removed at teardown,
    also when the test fails. Example::

        def test_dind_pod(run_pod):
            run = run_pod("scenarios/k8s-dind/pod.yaml", backoff_scale=0.1)
            run.pod.wait_for(lambda: run.pod.statuses["docker-cmds"].restarts >= 1, 30, "a restart")
            run.observe()
            run.result().placement.image("httpd:latest").in_daemon("dind:dind-daemon")
    """
    from harness.kubernetes_run import PodRun
    from harness.kubernetes_spec import load_pod

    runs = []

    def start(manifest, backoff_scale: float = 1.0):
        run = PodRun(engine_client, load_pod(manifest), backoff_scale, host=host_engine).__enter__()
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and report.when == "call":
        for result in item.stash.get(_RESULTS_KEY, []):
            report.sections.append((f"placement {result.scenario}/{result.mode}", result.placement.table()))
            for job in result.jobs:
                if job.trace:
                    report.sections.append((f"trace {result.scenario}/{result.mode}/{job.name}", job.trace))
    return report
