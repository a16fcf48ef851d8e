"""The generated stage scripts, run by a real bash (and dash where installed) to check quoting."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness.executor import script
from harness.executor.jobvars import JobVariables, Variable
from harness.executor.trace import Trace

SHELLS = [shell for shell in ("bash", "dash") if shutil.which(shell)]
HARD_VALUES = [
    "plain",
    "it's \"quoted\"",
    "$HOME ${PATH} $(echo no) `echo no`",
    "back\\slash \\n \\\\",
    "line one\nline two\n",
    "tab\tand ; | & < > * ? [a]",
    "'",
    "",
]


def run(shell: str, text: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([shell], input=text, capture_output=True, text=True, cwd=cwd, timeout=30)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("value", HARD_VALUES)
def test_quote_round_trips(shell, value, tmp_path):
    completed = run(shell, f"printf '%s' {script.quote(value)}", tmp_path)
    assert completed.stdout == value


@pytest.mark.parametrize("shell", SHELLS)
def test_exports_keep_values_literal(shell, tmp_path):
    lines = script.export_lines([(f"V{index}", value, False) for index, value in enumerate(HARD_VALUES)], "/unused")
    checks = [f'printf "%s\\0" "$V{index}"' for index in range(len(HARD_VALUES))]
    body = script.user_script_body(lines, str(tmp_path), checks)
    completed = run(shell, script.wrap(body), tmp_path)
    assert completed.returncode == 0, completed.stderr
    values = completed.stdout.split("\0")
    shown = [value.split("\x1b[0;m\n", 1)[-1] for value in values[: len(HARD_VALUES)]]
    assert shown == HARD_VALUES


@pytest.mark.parametrize("shell", SHELLS)
def test_file_variable_written_to_temp_dir(shell, tmp_path):
    temp_dir = str(tmp_path / "project.tmp")
    lines = script.export_lines([("SECRET_FILE", "a'b\n$c\\d", True)], temp_dir)
    body = script.user_script_body(lines, str(tmp_path), ['cat "$SECRET_FILE"', 'echo "$SECRET_FILE"'])
    completed = run(shell, script.wrap(body), tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "a'b\n$c\\d" in completed.stdout
    assert f"{temp_dir}/SECRET_FILE" in completed.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_commands_echoed_in_green(shell, tmp_path):
    # printf, not echo: dash's echo itself interprets backslashes.
    body = script.user_script_body([], str(tmp_path), ["printf '%s\\n' 'a $b \\c'", "echo first\necho second"])
    completed = run(shell, script.wrap(body), tmp_path)
    assert "\x1b[32;1m$ printf '%s\\n' 'a $b \\c'\x1b[0;m\na $b \\c\n" in completed.stdout
    assert "\x1b[32;1m$ echo first # collapsed multi-line command\x1b[0;m\nfirst\nsecond\n" in completed.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_first_failure_stops_script(shell, tmp_path):
    body = script.user_script_body([], str(tmp_path), ["echo before", "exit 7", "echo after"])
    completed = run(shell, script.wrap(body), tmp_path)
    assert completed.returncode == 7
    assert "before" in completed.stdout
    assert "\nafter" not in completed.stdout


def test_pipefail_enabled_in_bash(tmp_path):
    body = script.user_script_body([], str(tmp_path), ["false | true", "echo unreachable"])
    completed = run("bash", script.wrap(body), tmp_path)
    assert completed.returncode == 1
    assert "\nunreachable" not in completed.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_noclobber_off_and_stdin_closed(shell, tmp_path):
    body = script.user_script_body([], str(tmp_path), ["echo x > f", "echo y > f", "cat f", "cat; echo stdin-empty"])
    completed = run(shell, script.wrap(body) + "echo leftover-input\n", tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "y\n" in completed.stdout
    assert "stdin-empty" in completed.stdout


def test_missing_project_dir_fails(tmp_path):
    body = script.user_script_body([], str(tmp_path / "missing"), ["echo never"])
    completed = run("bash", script.wrap(body), tmp_path)
    assert completed.returncode != 0
    assert "never" not in completed.stdout


def test_debug_trace_adds_xtrace():
    assert "set -o xtrace" in script.wrap("true\n", trace=True)
    assert "set -o xtrace" not in script.wrap("true\n")


@pytest.mark.parametrize("shell", SHELLS)
def test_detect_shell_script_execs_a_shell(shell, tmp_path):
    completed = subprocess.run([shell, "-c", script.detect_shell_script()], input="echo detected $0\n",
                               capture_output=True, text=True, timeout=30)
    assert completed.stdout.startswith("detected /")


def test_variable_expansion():
    variables = JobVariables([
        Variable("A", "one"), Variable("B", "$A-${A}-$MISSING-$$"), Variable("C", "$A", raw=True),
        Variable("A", "two"),
    ]).expanded()
    assert variables.get("B") == "two-two--$"
    assert variables.get("C") == "$A"


def test_public_or_internal_excludes_private():
    variables = JobVariables([Variable("CI_JOB_TOKEN", "t", public=False), Variable("X", "1", public=True),
                              Variable("CI_PROJECT_DIR", "/b", public=False, internal=True)])
    assert [variable.key for variable in variables.public_or_internal()] == ["X", "CI_PROJECT_DIR"]


def test_trace_masks_secret_split_across_chunks():
    trace = Trace(secrets=["s3cr3t-value"])
    trace.write("token is s3cr")
    trace.write("3t-value and more\npartial s3cr3t-value")
    trace.flush_pending()
    text = trace.getvalue()
    assert "s3cr3t" not in text
    assert text == "token is [MASKED] and more\npartial [MASKED]\n"
