"""The dead-session sweep's treatment of wiring directories that carry no Docker label."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time

import pytest

from harness import cleanup
from harness.registry_container import OWNER_PID_FILE
from harness.registry_trust import registry_state_dir

pytestmark = pytest.mark.engine


def _wiring_dir(owner_pid: int):
    """Create a session wiring directory owned by ``owner_pid``, older than the sweep's grace period."""
    directory = registry_state_dir() / "sessions" / secrets.token_hex(4)
    directory.mkdir(parents=True)
    (directory / OWNER_PID_FILE).write_text(str(owner_pid))
    old = time.time() - 2 * cleanup.ORPHAN_AGE_SECONDS
    os.utime(directory, (old, old))
    return directory


def _finished_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_sweep_keeps_live_owner_wiring(engine_client):
    live, dead = _wiring_dir(os.getpid()), _wiring_dir(_finished_pid())
    try:
        cleanup.clean(engine_client, dead_only=True)

        # Catches a sweep that judges by age alone: a live session between two runs has no
        # container, and its registry wiring would vanish under it.
        assert live.is_dir()
        assert not dead.exists()
    finally:
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(dead, ignore_errors=True)
