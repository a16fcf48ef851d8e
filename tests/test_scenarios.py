"""Every scenario folder with ``[[expect]]`` entries, run for real once per mode.

Folders are discovered at collection time, so a new scenario needs no Python. Each test id is
``<scenario>[<mode>]`` and carries the mode's kind as a marker, so ``pytest -m dind`` selects
the DinD runs. The parsing tests at the end use hand-written scenario.toml files and no engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.expectations import evaluate
from harness.scenario import SCENARIOS_DIR, list_scenarios, load_scenario

from worker_groups import SHARED_SCENARIO_RUNS


def _scenario_params() -> list:
    params = []
    for scenario in list_scenarios():
        if not scenario.expectations:
            continue
        shared = SHARED_SCENARIO_RUNS.get(scenario.folder.name)
        for mode, files in scenario.modes.items():
            # Bundled scenarios are run by folder name, the key the run_scenario fixture caches
            # runs under, so a run that another test module also needs happens once per session
            # (and per worker: the shared ones go to one worker).
            marks = [getattr(pytest.mark, files.kind), pytest.mark.engine, *([shared] if shared else [])]
            params.append(pytest.param(scenario.folder.name, mode, id=f"{scenario.name}[{mode}]", marks=marks))
    return params


@pytest.mark.parametrize(("folder", "mode"), _scenario_params())
def test_scenario(run_scenario, folder, mode):
    scenario = load_scenario(folder)
    result = run_scenario(folder, mode)

    failures = evaluate(scenario.expectations, result)

    report = "\n\n".join(str(failure) for failure in failures)
    assert not failures, f"{len(failures)} unmet expectation(s) of {scenario.name} in {mode}:\n\n{report}\n\n" \
                         f"{result.summary()}\n{result.placement.table()}"


# Parsing: one broken scenario.toml per case, checked for the key and the fix in the error.

SEED = SCENARIOS_DIR / "seed"
VALID_EXPECT = '[[expect]]\njob = "BuildImages"\nstatus = "success"\nbecause = "it builds"\n'


@pytest.fixture
def seed_copy(tmp_path) -> Path:
    folder = tmp_path / "seed"
    shutil.copytree(SEED, folder)
    return folder


def _with(folder: Path, extra: str) -> Path:
    path = folder / "scenario.toml"
    text = path.read_text().split("[[expect]]", 1)[0]
    path.write_text(text + extra)
    return folder


BAD_EXPECT = {
    "unknown-key": ('[[expect]]\njob = "A"\nstatus = "failed"\nin = "host"\nbecause = "x"\n',
                    "expect[0].in", "unknown key for a job check", "use one of:"),
    "missing-because": ('[[expect]]\njob = "A"\nstatus = "failed"\n',
                        "expect[0].because", "missing or empty", "say why"),
    "bad-selector": (VALID_EXPECT + '[[expect]]\nimage = "app:1"\nin = "dind/Build"\nbecause = "x"\n',
                     "expect[1].in", "invalid daemon selector 'dind/Build'", "dind:<job>"),
    "two-subjects": ('[[expect]]\njob = "A"\nimage = "app:1"\nstatus = "failed"\nbecause = "x"\n',
                     "expect[0]", "several subjects (job, image)", "exactly one of"),
    "no-check": ('[[expect]]\nimage = "app:1"\nbecause = "x"\n',
                 "expect[0]", "no check on image 'app:1'", "add one of: in, not_in, only_in"),
    "undefined-mode": ('[[expect]]\nmodes = ["k8s"]\njob = "A"\nstatus = "failed"\nbecause = "x"\n',
                       "expect[0].modes", "mode 'k8s' is not defined", "use one of: dind, dood"),
    "bad-status": ('[[expect]]\njob = "A"\nstatus = "passed"\nbecause = "x"\n',
                   "expect[0].status", "invalid status 'passed'", "success, failed, skipped"),
    "trace-not-list": ('[[expect]]\njob = "A"\ntrace_contains = "text"\nbecause = "x"\n',
                       "expect[0].trace_contains", "expected a list", '["text"'),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPECT))
def test_bad_expect_rejected(seed_copy, case):
    text, key, problem, fix = BAD_EXPECT[case]

    with pytest.raises(InputError) as raised:
        load_scenario(_with(seed_copy, text))

    assert raised.value.key == key
    assert problem in raised.value.problem
    assert fix in raised.value.fix


def test_mode_kind_and_variables_parsed(seed_copy):
    path = seed_copy / "scenario.toml"
    path.write_text(path.read_text().replace(
        "[modes.dood]", '[modes.plain-tcp]\nkind = "dind"\npipeline = "project/.gitlab-ci.yml"\n'
        'runner_config = "config.dind.toml"\nvariables = { DOCKER_TLS_CERTDIR = "" }\n\n[modes.dood]'))

    scenario = load_scenario(seed_copy)

    assert scenario.modes["plain-tcp"].kind == "dind"
    assert scenario.modes["plain-tcp"].variables == (("DOCKER_TLS_CERTDIR", ""),)
    assert scenario.modes["dood"].kind == "dood"


def test_mode_without_kind_rejected(seed_copy):
    path = seed_copy / "scenario.toml"
    path.write_text(path.read_text().replace("[modes.dood]", "[modes.socket]"))

    with pytest.raises(InputError) as raised:
        load_scenario(seed_copy)

    assert raised.value.key == "modes.socket.kind"
    assert "kind = " in raised.value.fix


def test_every_bundled_scenario_loads():
    names = [scenario.name for scenario in list_scenarios()]

    assert "seed" in names
    assert len(names) == len(set(names)), names
