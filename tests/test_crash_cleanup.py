"""A `harness run` stopped in the middle of a DinD job, by Ctrl-C and by SIGKILL.

Ctrl-C and SIGHUP run the normal teardown, so nothing of the run's session is left. SIGKILL
leaves the session's labelled resources behind, and the dead-session sweep that every new pytest
session and every new ``harness run`` does first (``cleanup.clean(dead_only=True)``) removes all
of them.
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness import cleanup, labels
from harness.registry_trust import HOST_CERTS_DIR, HOSTS_FILE, registry_state_dir
from harness.sandbox import sandboxes_dir

pytestmark = [pytest.mark.engine, pytest.mark.dind, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent
JOB_STARTED = "job BuildImages (stage build) starting"
START_TIMEOUT_SECONDS = 600
TEARDOWN_TIMEOUT_SECONDS = 300


class _Run:
    """`harness run seed --mode dind` in a subprocess under its own session id, with its log lines."""

    def __init__(self) -> None:
        self.session = secrets.token_hex(4)
        environment = {**os.environ, "HARNESS_SESSION_ID": self.session}
        environment.pop("HARNESS_OWNER_PID", None)
        self.process = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "seed", "--mode", "dind"],
                                        cwd=REPO_ROOT, env=environment, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for_line(self, text: str) -> None:
        """Block until a log line contains ``text``; fail when the run ends or times out first."""
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=START_TIMEOUT_SECONDS)
            except queue.Empty:
                pytest.fail(f"no log line with {text!r} within {START_TIMEOUT_SECONDS} s; log:\n{''.join(seen)}")
            seen.append(line)
            if text in line:
                return
            if self.process.poll() is not None and self.lines.empty():
                pytest.fail(f"the run exited with {self.process.returncode} before {text!r}; log:\n{''.join(seen)}")

    def kill(self) -> None:
        """Send SIGKILL before the run leaves the job, so no teardown code runs."""
        self.process.kill()
        self.process.wait(timeout=30)


def _leftovers(client, session: str) -> list[str]:
    """Return every labelled resource, sandbox, temporary and wiring directory and host trust entry of ``session``."""
    found = cleanup.clean(client, session=session, dry_run=True)
    names = [name for rows in (found.containers, found.networks, found.volumes) for name, _ in rows]
    names += [str(path) for path in sandboxes_dir().glob(f"*-{session}-*")]
    names += [str(path) for path in Path(tempfile.gettempdir()).glob(f"harness-*-{session}-*")]
    names += [str(path) for path in (registry_state_dir() / "sessions").glob(session)]
    names += [line for line in HOSTS_FILE.read_text().splitlines() if session in line]
    if HOST_CERTS_DIR.is_dir():
        names += [str(marker) for marker in HOST_CERTS_DIR.glob("*/*") if marker.is_file()
                  and marker.name != "ca.crt" and session in marker.read_text()]
    return names


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hangup"])
def test_signal_mid_job_leaves_nothing(engine_client, signum):
    run = _Run()
    run.wait_for_line(JOB_STARTED)

    # SIGHUP is what a closed terminal or a dropped SSH connection sends.
    run.process.send_signal(signum)
    returncode = run.process.wait(timeout=TEARDOWN_TIMEOUT_SECONDS)
    left = _leftovers(engine_client, run.session)
    # Removed here, so a failure leaves no sandbox running on the shared engine.
    cleanup.clean(engine_client, session=run.session)

    # Catches a signal that skips the teardown (anything left) or that is reported as a crash.
    assert left == []
    assert returncode == 128 + signum


def test_sigkill_mid_job_swept_next_session(engine_client):
    run = _Run()
    run.wait_for_line(JOB_STARTED)

    run.kill()
    left = _leftovers(engine_client, run.session)
    # Without these the test would prove nothing: SIGKILL skips every teardown, so the sandbox,
    # its volume, the infrastructure network, the mirror and the registry are still there.
    assert any("-sandbox-" in name for name in left), left
    assert any("-registry-" in name for name in left), left

    # The next harness command sweeps first; this one then fails on its unknown scenario. Its own
    # session id keeps its end-of-command sweep away from this test's session.
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("HARNESS_SESSION_ID", "HARNESS_OWNER_PID")}
    sweeper = subprocess.run([sys.executable, "-m", "harness.cli", "run", "no-such-scenario"], cwd=REPO_ROOT,
                             env=environment, capture_output=True, text=True, timeout=TEARDOWN_TIMEOUT_SECONDS)

    assert sweeper.returncode == 2, sweeper.stderr
    # Catches a sweep that misses a labelled resource, a sandbox directory or host trust.
    assert _leftovers(engine_client, run.session) == []


WAITING_TEST = """
import time

def test_wait(host_engine):
    print("sandbox ready", host_engine.description, flush=True)
    time.sleep(600)
"""


def test_sigterm_to_pytest_tears_down(engine_client, tmp_path):
    (tmp_path / "test_wait.py").write_text(WAITING_TEST)
    session = secrets.token_hex(4)
    # The inner pytest runs outside the repository, so it is pointed at this checkout's package.
    environment = {**os.environ, "HARNESS_SESSION_ID": session, "PYTHONPATH": str(REPO_ROOT)}
    environment.pop("HARNESS_OWNER_PID", None)
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                               cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if "sandbox ready" in line:
            break
    assert any("sandbox ready" in line for line in output), "".join(output)
    assert _leftovers(engine_client, session), "the inner session created nothing"

    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=TEARDOWN_TIMEOUT_SECONDS)

    # Catches a pytest session that dies on SIGTERM without removing its sandbox and mirror.
    assert _leftovers(engine_client, session) == []


SLOW_TEARDOWN_TEST = """
import time

import pytest


@pytest.fixture
def slow_teardown(host_engine):
    yield
    # Longer than the 10 s that pytest-xdist 3.8 gives a worker to exit before it kills it.
    time.sleep(15)


@pytest.mark.parametrize("worker", ["a", "b"])
def test_wait(slow_teardown, worker):
    time.sleep(600)
"""


def test_sigterm_to_xdist_controller_tears_down_workers(engine_client, tmp_path):
    (tmp_path / "test_wait.py").write_text(SLOW_TEARDOWN_TEST)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for variable in ("HARNESS_SESSION_ID", "HARNESS_OWNER_PID"):
        environment.pop(variable, None)
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", str(tmp_path)],
                               cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        # Workers print nothing through the controller, so the test waits for their sandboxes.
        sessions = _wait_for_worker_sandboxes(engine_client, process.pid, 2)
    except BaseException:
        process.kill()
        raise

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=TEARDOWN_TIMEOUT_SECONDS)

    # Catches workers that the controller ends without their teardown.
    assert "KeyboardInterrupt" in output, output
    for session in sessions:
        assert _leftovers(engine_client, session) == [], output


def _wait_for_worker_sandboxes(client, controller_pid: int, count: int) -> set[str]:
    """Return the sessions of ``count`` running sandboxes whose owners are children of ``controller_pid``."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        workers = {str(pid) for pid in _children(controller_pid)}
        sessions = {summary["Labels"][labels.SESSION]
                    for summary in client.api.containers(filters=labels.managed_filter())
                    if summary["Labels"].get(labels.OWNER_PID) in workers and "-sandbox-" in summary["Names"][0]}
        if len(sessions) >= count:
            return sessions
        time.sleep(1)
    pytest.fail(f"{count} worker sandboxes did not start within {START_TIMEOUT_SECONDS} s")


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return children
