"""ci/nightly.gitlab-ci.yml matches the matrix grid: one job per cell, with the cell's variables.

No GitLab instance is reachable here, so the file is checked by expanding ``parallel: matrix:``
as GitLab does and comparing the jobs with ``harness.matrix.plan``.
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ElementTree

import pytest
import yaml

from harness import matrix, nightly_ci
from harness.engine_lines import ENGINE_LINES
from harness.scenario import load_scenario

VARIABLES = ("SCENARIO", "MODE", "DIND_VERSION", "RUNNER_COMPAT")


def _expand(entries: list[dict]) -> list[tuple[str, ...]]:
    """Expand ``parallel: matrix:`` entries into one variable tuple per job, as GitLab does."""
    jobs = []
    for entry in entries:
        lists = [entry[key] if isinstance(entry[key], list) else [entry[key]] for key in VARIABLES]
        jobs += list(itertools.product(*lists))
    return jobs


@pytest.fixture(scope="module")
def nightly() -> dict:
    return yaml.safe_load(nightly_ci.NIGHTLY_FILE.read_text())


def test_file_is_up_to_date():
    assert nightly_ci.NIGHTLY_FILE.read_text() == nightly_ci.render(nightly_ci.matrix_entries()), \
        "ci/nightly.gitlab-ci.yml is stale; run `harness nightly-ci`"


def test_one_job_per_cell(nightly):
    entries = nightly["nightly-cell"]["parallel"]["matrix"]
    expected = sorted((cell.scenario, cell.mode, cell.engine.name, cell.runner_version)
                      for name in nightly_ci.DEFAULT_SCENARIOS
                      for cell in matrix.plan(load_scenario(name)))

    jobs = sorted(_expand(entries))

    assert jobs == expected
    assert len(jobs) == nightly_ci.job_count(entries) == 30
    assert len(set(jobs)) == len(jobs)
    assert all(set(entry) == set(VARIABLES) for entry in entries)


def test_every_engine_line_and_generation_runs(nightly):
    jobs = _expand(nightly["nightly-cell"]["parallel"]["matrix"])

    assert {job[2] for job in jobs} == {line.name for line in ENGINE_LINES}
    assert {job[3] for job in jobs} == set(matrix.DEFAULT_RUNNER_VERSIONS)


def test_cell_job_targets_its_runner_engine(nightly):
    job = nightly["nightly-cell"]
    command = job["script"][-1]

    assert job["variables"]["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert job["tags"] == [nightly_ci.RUNNER_TAG]
    for variable in VARIABLES:
        assert f'"${variable}"' in command
    assert "--parallel 1" in command
    assert job["artifacts"]["reports"]["junit"] == "junit/*.xml"
    assert job["artifacts"]["when"] == "always"


def test_report_job_collects_junit(nightly):
    report = nightly["nightly-report"]

    assert report["needs"] == [{"job": "nightly-cell", "artifacts": True}]
    assert report["when"] == "always"
    assert "merge junit" in report["script"][0]
    assert report["artifacts"]["reports"]["junit"] == "nightly-junit.xml"


def test_oversized_matrix_is_rejected():
    entries = [{"SCENARIO": "seed", "MODE": ["dind"], "DIND_VERSION": [str(i) for i in range(201)],
                "RUNNER_COMPAT": ["19.4.0"]}]

    with pytest.raises(ValueError, match="201 jobs"):
        nightly_ci.pipeline(entries)


def test_merge_junit_counts_cells(tmp_path):
    (tmp_path / "1.xml").write_text('<testsuite><testcase name="a"/></testsuite>')
    (tmp_path / "2.xml").write_text('<testsuite><testcase name="b"><failure message="x"/></testcase></testsuite>')

    text, cases, failures = nightly_ci.merge_junit(list(tmp_path.glob("*.xml")))
    root = ElementTree.fromstring(text)

    assert (cases, failures) == (2, 1)
    assert [case.get("name") for case in root.iter("testcase")] == ["a", "b"]
    assert root.get("failures") == "1"


def test_merge_command_exit_status(tmp_path, capsys):
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "1.xml").write_text('<testsuite><testcase name="a"/></testsuite>')

    status = nightly_ci.main(["merge", str(tmp_path / "cells"), "--output", str(tmp_path / "all.xml")])

    assert status == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out
    assert nightly_ci.main(["merge", str(tmp_path / "empty")]) == 2
