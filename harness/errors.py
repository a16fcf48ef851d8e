"""Exception tree of the harness: one root, subclasses that carry what a user needs to act."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HarnessError(Exception):
    """Root of every error the harness raises for its own failures."""

    exit_code = 1


class InputError(HarnessError):
    """A file the user wrote (pipeline, runner config, pod, scenario) is invalid.

    Renders as one line: ``FILE: KEY: PROBLEM; FIX``. The CLI exits with code 2 on it.
    """

    exit_code = 2

    def __init__(self, file: str, key: str, problem: str, fix: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        location = f"{self.file}: {self.key}" if self.key else self.file
        # A value quoted from the input may contain line breaks, and the error must stay one line.
        return _one_line(f"{location}: {self.problem}; {self.fix}")


def unknown_key_fix(name: object, known: Iterable[str], ignored: Iterable[str] = (),
                    cutoff: float = 0.6) -> str:
    """Return the fix for an unknown key: the closest key, else the list of ``known`` keys.

    ``ignored`` keys are accepted without effect, so they count as spellings but are not offered
    as keys to use. ``cutoff`` is difflib's similarity ratio; its default of 0.6 catches one or
    two swapped or missing letters in keys of five letters or more.
    """
    choices = sorted(known)
    close = difflib.get_close_matches(str(name), [*choices, *sorted(ignored)], n=1, cutoff=cutoff)
    if close:
        return f"did you mean `{close[0]}`?"
    return f"remove it or use one of: {', '.join(choices)}"


def _one_line(text: str) -> str:
    """Return ``text`` with carriage returns and newlines written as ``\\r`` and ``\\n``."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class EngineError(HarnessError):
    """The Docker engine is missing, stopped or refused an operation."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem


class ImageError(HarnessError):
    """A stand-in image could not be built, or an image a scenario names is missing."""


class MatrixError(HarnessError):
    """A matrix worker process ended without results (harness.matrix)."""


class RegistryError(HarnessError):
    """The local registry could not be started or used."""


class ReadinessTimeout(HarnessError, TimeoutError):
    """A daemon, registry or service did not become ready within its time limit.

    Carries the limit and a bounded tail of the component's log so the cause is visible.
    """

    def __init__(self, what: str, seconds: float, log_tail: str = "") -> None:
        self.what = what
        self.seconds = seconds
        self.log_tail = log_tail
        super().__init__(str(self))

    def __str__(self) -> str:
        message = f"{self.what} was not ready after {self.seconds:.0f} s"
        if self.log_tail:
            message += f"; last log lines:\n{self.log_tail}"
        return message
