"""Labels stamped on every container, network, volume and image the harness creates.

One prefix, one function. Cleanup finds what to remove only through these labels, so nothing the
harness did not create is ever removed.
"""

from __future__ import annotations

import os
import re
import secrets

PREFIX = "dind-dood-harness"
MANAGED = f"{PREFIX}.managed"
SESSION = f"{PREFIX}.session"
OWNER_PID = f"{PREFIX}.owner-pid"
TYPE = f"{PREFIX}.type"
STAND_IN = f"{PREFIX}.stand-in"
RECIPE_HASH = f"{PREFIX}.recipe-hash"
UPSTREAM = f"{PREFIX}.upstream"

# A runner container inherits both from the host process, so what it creates is owned by that process.
_session_id = os.environ.get("HARNESS_SESSION_ID") or secrets.token_hex(4)
_owner_pid = os.environ.get("HARNESS_OWNER_PID") or str(os.getpid())


def session_id_problem() -> str | None:
    """Return a one-line error when ``HARNESS_SESSION_ID`` cannot name resources, else None.

    The id goes into container, network and volume names and into temporary directory names
    that the dead-session sweep recognises by their hex digits.
    """
    given = os.environ.get("HARNESS_SESSION_ID")
    if not given or re.fullmatch(r"[0-9a-f]{4,32}", given):
        return None
    return (f'HARNESS_SESSION_ID: "{given}" is invalid; use 4 to 32 lowercase hex digits, '
            "such as 0a1b2c3d, or unset it for a random id")


def session_id() -> str:
    """Return the id of this harness session (8 hex characters, or ``HARNESS_SESSION_ID``)."""
    return _session_id


def owner_pid() -> str:
    """Return the pid of the host process that owns this session's resources."""
    return _owner_pid


def managed_labels(kind: str, **extra: str) -> dict[str, str]:
    """Return the labels for a resource of role ``kind`` (``registry``, ``runner``, ``job`` ...)."""
    labels = {
        MANAGED: "true",
        SESSION: session_id(),
        OWNER_PID: _owner_pid,
        TYPE: kind,
    }
    labels.update({f"{PREFIX}.{key.replace('_', '-')}": value for key, value in extra.items()})
    return labels


def session_filter(session: str | None = None) -> dict[str, list[str]]:
    """Return a docker-py ``filters`` dict matching resources of one session (default: this one)."""
    return {"label": [f"{MANAGED}=true", f"{SESSION}={session or session_id()}"]}


def managed_filter() -> dict[str, list[str]]:
    """Return a docker-py ``filters`` dict matching every resource any harness session created."""
    return {"label": [f"{MANAGED}=true"]}


def temp_prefix(kind: str) -> str:
    """Return the prefix of this session's temporary directories of ``kind`` (``runner``, ``project``).

    It names the session and the owner process, so a sweep can remove what a killed session left.
    """
    return f"harness-{kind}-{session_id()}-{_owner_pid}-"
