"""The ``[[expect]]`` entries of a scenario.toml: parsing, validation and evaluation against a run.

Each entry names one subject (a job, an image, a container, a watched path or a registry tag),
one or more checks on it, the modes it applies to, and ``because``: why real GitLab Runner and
Docker behave that way. :func:`evaluate` checks every entry of a mode against a RunResult and
returns each unmet one, so a test can report all of them at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError, unknown_key_fix

STATUSES = ("success", "failed", "skipped")

# Keys each subject accepts, and the type of each key's value.
SUBJECT_KEYS = {
    "job": {"status": "status", "exit_code": "integer", "trace_contains": "strings", "trace_lacks": "strings"},
    "image": {"in": "selector", "not_in": "selector", "only_in": "selector"},
    "container": {"in": "selector", "not_in": "selector", "only_in": "selector",
                  "running_on": "selector", "gone_from": "selector"},
    "path": {"has_files_in": "selector", "has_no_files_in": "selector"},
    "registry_tag": {"present": "boolean"},
}
_COMMON_KEYS = {"modes", "because"}

# Daemon selectors as harness.placement names daemons: host, dind:<job>[:<alias>],
# service:<job>[:<alias>] and job:<job>; a bare prefix selects every daemon of that kind.
_SELECTOR = re.compile(r"host|(dind|service|job)(:[^\s:][^\s]*)?")


@dataclass(frozen=True)
class Expectation:
    """One ``[[expect]]`` entry: a subject, its checks in file order, and the reason."""

    index: int
    subject: str
    target: str
    checks: tuple[tuple[str, object], ...]
    because: str
    modes: tuple[str, ...] = ()

    def applies_to(self, mode: str) -> bool:
        """Return whether this entry is checked in ``mode`` (an empty ``modes`` means every mode)."""
        return not self.modes or mode in self.modes

    def describe(self) -> str:
        """Return the entry in one line, such as ``expect[2]: job 'Test': status = 'failed'``."""
        checks = ", ".join(f"{key} = {value!r}" for key, value in self.checks)
        return f"expect[{self.index}]: {self.subject} {self.target!r}: {checks}"


@dataclass(frozen=True)
class Failure:
    """One unmet check of an expectation, with what was observed instead."""

    expectation: Expectation
    key: str
    observed: str

    def __str__(self) -> str:
        return (f"{self.expectation.describe()}\n  failed check: {self.key}\n  observed: {self.observed}\n"
                f"  because: {self.expectation.because}")


def parse_expectations(path: Path, entries: object, mode_names: list[str]) -> tuple[Expectation, ...]:
    """Validate the ``expect`` array of ``path`` and return one Expectation per entry.

    Raises:
        InputError: an entry has an unknown key, no subject or several, no check, no ``because``,
            a mode that is not defined, or a value of the wrong type (such as a bad selector).
    """
    if not isinstance(entries, list):
        raise InputError(path, "expect", f"expected an array of tables, got {type(entries).__name__}",
                         "write each check as its own [[expect]] table")
    return tuple(_parse_entry(path, index, entry, mode_names) for index, entry in enumerate(entries))


def _parse_entry(path: Path, index: int, entry: object, mode_names: list[str]) -> Expectation:
    prefix = f"expect[{index}]"
    if not isinstance(entry, dict):
        raise InputError(path, prefix, "expected a table", "write it as [[expect]]")

    subjects = [key for key in SUBJECT_KEYS if key in entry]
    if len(subjects) != 1:
        problem = "no subject" if not subjects else f"several subjects ({', '.join(subjects)})"
        raise InputError(path, prefix, problem, f"name exactly one of: {', '.join(SUBJECT_KEYS)}")
    subject = subjects[0]
    known = SUBJECT_KEYS[subject]
    for key in entry:
        if key not in known and key not in _COMMON_KEYS and key != subject:
            raise InputError(path, f"{prefix}.{key}", f"unknown key for a {subject} check",
                             unknown_key_fix(key, {subject, *known, *_COMMON_KEYS}))

    target = entry[subject]
    if not isinstance(target, str) or not target:
        raise InputError(path, f"{prefix}.{subject}", "expected a non-empty string", "quote the name")
    checks = tuple((key, _check_value(path, f"{prefix}.{key}", known[key], value))
                   for key, value in entry.items() if key in known)
    if not checks:
        raise InputError(path, prefix, f"no check on {subject} {target!r}",
                         f"add one of: {', '.join(known)}")

    return Expectation(index=index, subject=subject, target=target, checks=checks,
                       because=_because(path, prefix, entry),
                       modes=_modes(path, prefix, entry, mode_names))


def _because(path: Path, prefix: str, entry: dict) -> str:
    because = entry.get("because")
    if not isinstance(because, str) or not because.strip():
        raise InputError(path, f"{prefix}.because", "missing or empty",
                         "say why real GitLab Runner and Docker behave this way; it is printed on failure")
    return because.strip()


def _modes(path: Path, prefix: str, entry: dict, mode_names: list[str]) -> tuple[str, ...]:
    modes = entry.get("modes", [])
    if not isinstance(modes, list) or not all(isinstance(mode, str) for mode in modes):
        raise InputError(path, f"{prefix}.modes", "expected a list of mode names", 'write modes = ["dind"]')
    for mode in modes:
        if mode not in mode_names:
            raise InputError(path, f"{prefix}.modes", f"mode {mode!r} is not defined",
                             f"use one of: {', '.join(mode_names)}")
    return tuple(modes)


def _check_value(path: Path, key: str, kind: str, value: object) -> object:
    """Return ``value`` when it has the type ``kind`` needs, else raise InputError naming ``key``."""
    if kind == "selector":
        if not isinstance(value, str) or not _SELECTOR.fullmatch(value):
            raise InputError(path, key, f"invalid daemon selector {value!r}",
                             "use host, dind, dind:<job>, service:<job> or job:<job>")
    elif kind == "status":
        if value not in STATUSES:
            raise InputError(path, key, f"invalid status {value!r}", f"use one of: {', '.join(STATUSES)}")
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(path, key, f"expected an integer, got {value!r}", "write a number without quotes")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise InputError(path, key, f"expected true or false, got {value!r}", "write true or false")
    elif not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InputError(path, key, "expected a list of non-empty strings", 'write ["text", "more text"]')
    return value


def evaluate(expectations, result) -> list[Failure]:
    """Check every expectation that applies to ``result.mode`` and return the unmet checks.

    Reads only the RunResult (job results, placement snapshots, registry tags), so nothing on
    any daemon changes.
    """
    failures: list[Failure] = []
    for expectation in expectations:
        if not expectation.applies_to(result.mode):
            continue
        for key, value in expectation.checks:
            observed = _check(expectation, key, value, result)
            if observed is not None:
                failures.append(Failure(expectation, key, observed))
    return failures


def _check(expectation: Expectation, key: str, value: object, result) -> str | None:
    """Return None when the check holds, else a description of what was observed."""
    if expectation.subject == "job":
        return _check_job(expectation.target, key, value, result)
    if expectation.subject == "registry_tag":
        return _check_registry_tag(expectation.target, value, result)

    placement = result.placement
    query = {"image": placement.image, "container": placement.container, "path": placement.path}
    target = query[expectation.subject](expectation.target)
    method = {"in": "in_daemon"}.get(key, key)
    try:
        getattr(target, method)(value)
    except AssertionError as error:
        # The query's message ends with the whole placement table, which the test prints once.
        return str(error).split("\n", 1)[0]
    return None


def _check_job(name: str, key: str, value: object, result) -> str | None:
    try:
        job = result.job(name)
    except KeyError as error:
        return str(error.args[0])

    if key == "status":
        return None if job.status == value else f"status {job.status}"
    if key == "exit_code":
        return None if job.exit_code == value else f"exit code {job.exit_code}"
    if key == "trace_contains":
        missing = [text for text in value if text not in job.trace]
        return f"the trace of {name} lacks {missing!r}" if missing else None
    present = [text for text in value if text in job.trace]
    return f"the trace of {name} contains {present!r}" if present else None


def _check_registry_tag(reference: str, present: bool, result) -> str | None:
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = reference, "latest"
    tags = result.registry_tags.get(repository, [])
    if (tag in tags) == present:
        return None
    return f"the registry holds {repository}: {', '.join(tags) or 'no tags'}"
