"""Machine-wide locks: a second process waits until the holder releases the lock."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from harness import locks

TAKE_LOCK = "from harness import locks\nwith locks.machine_lock('test-lock-turns'):\n    print('got it', flush=True)\n"


def test_second_process_waits_for_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path))

    with locks.machine_lock("test-lock-turns"):
        waiter = subprocess.Popen([sys.executable, "-c", TAKE_LOCK], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.5)
        # Catches a lock that another process can take while this one holds it.
        assert waiter.poll() is None
    stdout, stderr = waiter.communicate(timeout=30)

    assert waiter.returncode == 0, stderr
    assert stdout == "got it\n"
    assert (tmp_path / "locks" / "test-lock-turns.lock").is_file()


def test_invalid_lock_name_rejected():
    with pytest.raises(ValueError, match="invalid lock name '../etc'"):
        with locks.machine_lock("../etc"):
            pass
