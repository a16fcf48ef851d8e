"""pytest-xdist: every worker is a harness session of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_given_session_id_rejected_with_workers(tmp_path):
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    # The inner pytest runs outside the repository, so it is pointed at this checkout's package.
    environment = {**os.environ, "HARNESS_SESSION_ID": "abcd1234", "PYTHONPATH": str(REPO_ROOT)}

    process = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", str(tmp_path)],
                             cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)

    # Catches workers that start as one session, whose teardowns remove each other's resources.
    assert process.returncode == 4, process.stdout + process.stderr
    assert "HARNESS_SESSION_ID is set, so every pytest-xdist worker would share one harness session" in process.stderr
    assert "passed" not in process.stdout
