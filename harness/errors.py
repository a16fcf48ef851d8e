"""Exception tree of the harness: one root, subclasses that carry what a user needs to act."""

from __future__ import annotations


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
