"""Bash scripts the executor writes to a container's standard input, shaped like GitLab Runner's.

A stage script is an outer wrapper (TERM trap, pipefail when the shell has it, errexit,
noclobber off) around one ``eval`` of a single-quoted body. The body exports the job variables,
enters the project directory and runs each command after echoing ``$ <command>`` in green.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence

ANSI_BOLD_GREEN = r"\033[32;1m"
ANSI_RESET = r"\033[0;m"

# The build container's command: exec the first shell found, as the runner's detect script does.
SHELL_CANDIDATES = (
    "/usr/local/bin/bash",
    "/usr/bin/bash",
    "/bin/bash",
    "/usr/local/bin/sh",
    "/usr/bin/sh",
    "/bin/sh",
    "/busybox/sh",
)


def quote(value: str) -> str:
    """Return ``value`` as one POSIX single-quoted word that every ``sh`` reads back unchanged."""
    return "'" + value.replace("'", "'\\''") + "'"


def detect_shell_script() -> str:
    """Return the ``sh -c`` script that execs the first shell of ``SHELL_CANDIDATES``."""
    lines = []
    for index, shell in enumerate(SHELL_CANDIDATES):
        keyword = "if" if index == 0 else "elif"
        lines.append(f"{keyword} [ -x {shell} ]; then\n\texec {shell} \"$@\"")
    lines.append("else\n\techo shell not found\n\texit 1\nfi\n")
    return "\n".join(lines)


def echo_command(command: str) -> str:
    """Return a line that prints ``$ <command>`` in bold green, as the runner's trace shows it.

    A multi-line command is shown by its first line plus ``# collapsed multi-line command``.
    """
    lines = command.split("\n")
    shown = lines[0]
    if len(lines) > 1:
        shown += " # collapsed multi-line command"
    # printf keeps the command text literal: it is an argument, never part of the format.
    return f"printf '{ANSI_BOLD_GREEN}%s{ANSI_RESET}\\n' {quote('$ ' + shown)}"


def export_lines(variables: Iterable[tuple[str, str, bool]], temp_dir: str) -> list[str]:
    """Return ``export`` lines for ``(key, value, is_file)`` triples.

    A file variable is written to ``<temp_dir>/<key>`` and the variable contains that path, as the
    runner does for ``file: true`` variables.
    """
    lines: list[str] = []
    wrote_dir = False
    for key, value, is_file in variables:
        if not is_file:
            lines.append(f"export {key}={quote(value)}")
            continue
        if not wrote_dir:
            lines.append(f"mkdir -p {quote(temp_dir)}")
            wrote_dir = True
        path = posixpath.join(temp_dir, key)
        lines.append(f"printf '%s' {quote(value)} > {quote(path)}")
        lines.append(f"export {key}={quote(path)}")
    return lines


def user_script_body(exports: Sequence[str], project_dir: str, commands: Sequence[str]) -> str:
    """Return the body of a ``step_*`` or ``after_script`` stage: exports, cd, echoed commands."""
    lines = list(exports)
    lines.append(f"cd {quote(project_dir)}")
    for command in commands:
        command = command.strip()
        if not command:
            continue
        lines.append(echo_command(command))
        lines.append(command)
    return "\n".join(lines) + "\n"


def wrap(body: str, trace: bool = False) -> str:
    """Return the complete stage script around ``body``, ready for a shell's standard input.

    Args:
        body: Commands to run; evaluated once inside a subshell whose stdin is /dev/null.
        trace: Add ``set -o xtrace`` as ``CI_DEBUG_TRACE=true`` does.
    """
    lines = ["#!/usr/bin/env bash", "", "trap 'exit 1' TERM", ""]
    if trace:
        lines.append("set -o xtrace")
    lines.append('case "$(set -o)" in *"pipefail"*) set -o pipefail;; esac; set -o errexit')
    lines.append("set +o noclobber")
    lines.append(f"( trap 'exit 1' TERM; eval {quote(body)} ) < /dev/null")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"
