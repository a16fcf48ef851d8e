"""The benchmark command under SIGTERM and SIGKILL: what it created goes, now or with the next sweep."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cleanup, labels

pytestmark = pytest.mark.engine

REPO_DIR = Path(__file__).resolve().parent.parent
APPEAR_TIMEOUT_SECONDS = 60
DAEMON_SETTLE_SECONDS = 3


def _start_bench(session: str, results: Path, *arguments: str) -> subprocess.Popen:
    env = dict(os.environ, HARNESS_SESSION_ID=session)
    return subprocess.Popen([sys.executable, "-m", "bench", "--rounds", "3", "--results", str(results), *arguments],
                            cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(client, session: str, condition) -> None:
    """Wait until ``condition(client, session)`` is true, such as a container of the session existing."""
    deadline = time.monotonic() + APPEAR_TIMEOUT_SECONDS
    while not condition(client, session):
        assert time.monotonic() < deadline, f"the benchmark of session {session} created nothing in time"
        time.sleep(0.1)


def _session_containers(client, session: str) -> list:
    # Sparse: a full listing inspects each container, and the seeding round removes its containers
    # between the listing and the inspection (a 404 that failed this test once in CI).
    return client.containers.list(all=True, sparse=True, filters=labels.session_filter(session))


def _session_images(client, session: str) -> list:
    return client.images.list(filters=labels.session_filter(session))


def test_sigterm_removes_readiness_daemon(engine_client, tmp_path):
    session = secrets.token_hex(4)
    process = _start_bench(session, tmp_path / "results", "--only", "readiness")
    try:
        _wait_for(engine_client, session, _session_containers)

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()

    # Catches a SIGTERM that ends the run without its cleanup: a privileged dind daemon kept running.
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "bench: interrupted; what this run created has been removed" in output
    assert _session_containers(engine_client, session) == []
    assert not (tmp_path / "results" / "results.md").exists()


def test_sweep_after_sigkill_removes_seeding_images(engine_client, tmp_path):
    session = secrets.token_hex(4)
    process = _start_bench(session, tmp_path / "results", "--only", "seeding", "--seed-sizes", "4")
    try:
        _wait_for(engine_client, session, lambda client, owner: _session_images(client, owner)
                  and _session_containers(client, owner))
    finally:
        process.kill()
        process.wait(timeout=30)
    # The daemon completes a create or build request that the killed client had already sent.
    time.sleep(DAEMON_SETTLE_SECONDS)

    cleanup.clean(engine_client, dead_only=True)

    # Catches seeding images that a killed run leaves for good, as no sweep removed images before.
    assert _session_images(engine_client, session) == []
    assert _session_containers(engine_client, session) == []
