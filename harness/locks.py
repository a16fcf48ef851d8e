"""Machine-wide locks for resources that only one harness process at a time can hold.

Some resources have one fixed name on the whole machine: a host path under ``/tmp`` that every
sandbox shares, the container name ``nodedemo`` on the real engine, a registry hostname in
``/etc/hosts``. Two pytest-xdist workers,
or two sessions started side by side, would collide on them. A lock file under the state
directory makes them take turns, and the kernel releases it when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from harness.engine import state_dir

log = logging.getLogger(__name__)

_LOCK_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


@contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Hold the exclusive machine-wide lock ``name`` while the block runs; wait for it if taken.

    Raises:
        ValueError: ``name`` is not lowercase letters, digits, dots and dashes.
    """
    if not _LOCK_NAME.fullmatch(name):
        raise ValueError(f"invalid lock name {name!r}; use lowercase letters, digits, dots and dashes")
    directory = state_dir() / "locks"
    directory.mkdir(parents=True, exist_ok=True)

    with open(directory / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("lock %s is taken by another process; waiting for it", name)
            started = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("acquired lock %s after %.1f s", name, time.monotonic() - started)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
