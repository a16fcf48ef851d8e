"""The job trace: the log a GitLab user reads, with the runner's colours, sections and masking."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable
from typing import TextIO

from harness.variables import mask

ANSI_CLEAR = "\x1b[0K"
ANSI_RESET = "\x1b[0;m"
ANSI_BOLD_CYAN = "\x1b[36;1m"
ANSI_BOLD_GREEN = "\x1b[32;1m"
ANSI_BOLD_RED = "\x1b[31;1m"
ANSI_YELLOW = "\x1b[0;33m"


class Trace:
    """A job log that masks secrets, copies everything to ``stream`` and keeps the full text.

    Output arrives in chunks that may split a secret, so text is masked one complete line at a
    time and a partial last line waits in a buffer until its newline or ``close``.
    """

    def __init__(self, stream: TextIO | None = None, secrets: Iterable[str] = ()) -> None:
        self._stream = stream
        self._secrets = [secret for secret in secrets if secret]
        self._pending = ""
        self._text = io.StringIO()
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        """Append raw output (container logs, script output), masking secrets line by line."""
        with self._lock:
            self._pending += text
            complete, newline, rest = self._pending.rpartition("\n")
            if not newline:
                return
            self._pending = rest
            self._emit(complete + "\n")

    def flush_pending(self) -> None:
        """Emit a partial last line, for example when a stage's output ends without a newline."""
        with self._lock:
            if self._pending:
                pending, self._pending = self._pending, ""
                self._emit(pending + "\n")

    def _emit(self, text: str) -> None:
        text = mask(text, self._secrets)
        self._text.write(text)
        if self._stream is not None:
            self._stream.write(text)
            self._stream.flush()

    def line(self, text: str = "", colour: str = "") -> None:
        """Write one runner message line, optionally coloured."""
        self.flush_pending()
        self.write(f"{colour}{text}{ANSI_RESET}\n" if colour else f"{text}\n")

    def warning(self, text: str) -> None:
        """Write ``WARNING: text`` in yellow, as the runner's ``Warningln`` does."""
        self.line(f"WARNING: {text}", ANSI_YELLOW)

    def section_start(self, name: str, header: str) -> None:
        """Open a collapsible section ``name`` whose header line is ``header`` in bold cyan."""
        self.flush_pending()
        self.write(f"section_start:{int(time.time())}:{name}\r{ANSI_CLEAR}{ANSI_BOLD_CYAN}{header}{ANSI_RESET}\n")

    def section_end(self, name: str) -> None:
        """Close section ``name``."""
        self.flush_pending()
        self.write(f"section_end:{int(time.time())}:{name}\r{ANSI_CLEAR}")
        self.flush_pending()

    def getvalue(self) -> str:
        """Return the whole masked trace written so far."""
        with self._lock:
            return self._text.getvalue()
