"""The dead-session sweep's treatment of wiring directories that carry no Docker label."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time

import docker.errors
import pytest

from harness import cleanup, labels
from harness.registry_container import OWNER_PID_FILE
from harness.registry_trust import registry_state_dir
from scratch_images import build_scratch_image

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


def _session_image(client, session: str, owner_pid: int) -> str:
    """Build an image labelled as ``session``'s and owned by ``owner_pid``, and return its id."""
    image_labels = {labels.MANAGED: "true", labels.SESSION: session, labels.OWNER_PID: str(owner_pid)}
    return build_scratch_image(client, f"dind-dood-harness/sweep-test:{session}", image_labels)


def test_sweep_removes_dead_session_images(engine_client):
    dead_session, live_session = secrets.token_hex(4), secrets.token_hex(4)
    dead = _session_image(engine_client, dead_session, _finished_pid())
    live = _session_image(engine_client, live_session, os.getpid())
    try:
        found = cleanup.clean(engine_client, dead_only=True)

        # Catches a sweep that leaves images a killed session built, such as the benchmark's.
        assert (f"dind-dood-harness/sweep-test:{dead_session}", dead_session) in found.images
        with pytest.raises(docker.errors.ImageNotFound):
            engine_client.images.get(dead)
        assert engine_client.images.get(live).id == live
    finally:
        for image in (dead, live):
            try:
                engine_client.images.remove(image, force=True)
            except docker.errors.ImageNotFound:
                pass


def test_sweep_keeps_images_without_session(engine_client):
    sessionless = {tag for summary in engine_client.api.images(filters=labels.managed_filter())
                   if labels.SESSION not in (summary.get("Labels") or {}) for tag in summary.get("RepoTags") or []}

    found = cleanup.clean(engine_client, dead_only=True, dry_run=True)

    # The privileged probe image is managed but belongs to no session; a sweep must never take it.
    assert sessionless
    assert not sessionless & {name for name, _ in found.images}
