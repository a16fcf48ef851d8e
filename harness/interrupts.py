"""Turn SIGINT, SIGTERM and SIGHUP into one KeyboardInterrupt, so a command's teardown runs once.

A closed terminal or a lost SSH connection sends SIGHUP, and a CI job timeout or ``kill`` sends
SIGTERM. Each must tear down what the command created, as Ctrl-C does.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []


def install() -> None:
    """Make the first of SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread."""
    _received.clear()
    for signum in SIGNALS:
        signal.signal(signum, _interrupt)


def exit_status() -> int:
    """Return the shell's status for the signal received: 128 plus its number (130 when none)."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def _interrupt(signum, frame) -> None:
    # Later signals only log, because a second KeyboardInterrupt in the middle of the teardown
    # would leave half of what the command created behind.
    if _received:
        log.warning("teardown in progress: it removes what this run created; wait for it to finish")
        return
    _received.append(signum)
    raise KeyboardInterrupt
