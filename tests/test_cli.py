"""The `harness` command: bad command-line input and a missing engine, end to end.

Every failing case runs the real command in a subprocess and expects one error line on stderr,
no traceback, and nothing new on the engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Shared with the scenario-file cases. pytest puts tests/ on sys.path because it is not a package.
from test_bad_input import EngineState, assert_single_error, run_harness

FIX_VAR = "write --var KEY=VALUE"

COMMAND_LINE_CASES = {
    "var-without-equals": (("--var", "FOO"), "command line: --var: ", "'FOO' is not KEY=VALUE", FIX_VAR),
    "var-empty-key": (("--var", "=value"), "command line: --var: ", "'=value' is not KEY=VALUE", FIX_VAR),
    "var-invalid-name": (("--var", "MY-VAR=1"), "command line: --var MY-VAR: ", "invalid variable name",
                         "letters, digits and '_'"),
    "masked-var-without-equals": (("--masked-var", "TOKEN"), "command line: --masked-var: ",
                                  "the value is not KEY=VALUE", "write --masked-var KEY=VALUE"),
    "masked-var-short": (("--masked-var", "TOKEN=short"), "command line: --masked-var TOKEN: ",
                         "at least 8 characters", "use a longer value"),
    "masked-var-multi-line": (("--masked-var", "TOKEN=first line\nsecond line"),
                              "command line: --masked-var TOKEN: ", "a single line", "use a longer value"),
    "branch-missing": (("--branch", "no-such-branch"), "command line: --branch: ",
                       'has no branch "no-such-branch"', "omit --branch"),
}


@pytest.mark.engine
@pytest.mark.images
@pytest.mark.parametrize("args, location, problem, fix", list(COMMAND_LINE_CASES.values()),
                         ids=list(COMMAND_LINE_CASES))
def test_bad_option_fails_cleanly(args, location, problem, fix, engine_client) -> None:
    before = EngineState.capture(engine_client)

    outcome = run_harness("run", "seed", "--mode", "dind", *args)

    after = EngineState.capture(engine_client)
    assert_single_error(outcome, 2, location, problem, "; ", fix)
    assert outcome.stdout == ""
    assert before.leftovers(after, outcome.session) == []


@pytest.mark.parametrize("value", ["=hunter2-secret-value", "hunter2-secret-value"])
def test_masked_var_error_hides_value(value: str) -> None:
    outcome = run_harness("run", "seed", "--mode", "dind", "--masked-var", value)

    assert_single_error(outcome, 2, "command line: --masked-var: ", "is not KEY=VALUE")
    assert "hunter2" not in outcome.stderr
    assert "hunter2" not in outcome.stdout


@pytest.mark.engine
def test_unknown_scenario_name(engine_client) -> None:
    before = EngineState.capture(engine_client)

    outcome = run_harness("run", "no-such-scenario")

    after = EngineState.capture(engine_client)
    assert_single_error(outcome, 2, "harness: error: no-such-scenario: ", "no such scenario folder", "; ",
                        "bundled scenario: ", "seed")
    assert before.leftovers(after, outcome.session) == []


def test_scenario_path_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text('name = "x"\n')

    outcome = run_harness("run", str(path))

    assert_single_error(outcome, 2, f"{path}: ", "no such scenario folder", "; ", "contains scenario.toml")


@pytest.mark.engine
@pytest.mark.parametrize("command", [("doctor",), ("run", "seed", "--mode", "dind"), ("images", "list"),
                                     ("clean", "--dry-run")],
                         ids=["doctor", "run", "images", "clean"])
def test_engine_down_fails_cleanly(command, tmp_path: Path, engine_client) -> None:
    address = f"unix://{tmp_path}/missing/docker.sock"
    before = EngineState.capture(engine_client)

    outcome = run_harness(*command, env={"DOCKER_HOST": address})

    after = EngineState.capture(engine_client)
    assert_single_error(outcome, 1, f"harness: error: no Docker engine responds at DOCKER_HOST={address}; ",
                        "`harness engine up`")
    assert outcome.stdout == ""
    # A client that ignored DOCKER_HOST would have reached the real engine instead.
    assert before.leftovers(after, outcome.session) == []


def test_input_checked_before_engine(tmp_path: Path) -> None:
    # A wrong scenario name is reported even when no engine runs, with the input exit code.
    outcome = run_harness("run", "no-such-scenario", env={"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"})

    assert_single_error(outcome, 2, "no-such-scenario: no such scenario folder")


def test_scenarios_list_names_seed() -> None:
    outcome = run_harness("scenarios", "list")

    assert outcome.returncode == 0, outcome.stderr
    assert "seed" in [line.split()[0] for line in outcome.stdout.splitlines()]
    assert outcome.stderr == ""


@pytest.mark.engine
def test_in_process_main_keeps_caller_session(engine_client) -> None:
    from harness import cli, labels

    # A pytest worker shares its session label with what it created, such as its sandbox.
    network = engine_client.networks.create(f"{labels.PREFIX}-{labels.session_id()}-cli-caller",
                                            labels=labels.managed_labels("infrastructure"))
    try:
        status = cli.main(["scenarios", "list"])

        # Catches a command that sweeps its whole session and removes what its caller owns.
        network.reload()
        assert status == 0
        assert network.attrs["Labels"][labels.SESSION] == labels.session_id()
    finally:
        network.remove()
