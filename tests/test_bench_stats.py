"""Medians, ratios and tables of the benchmark report (pure formatting, no engine)."""

import time

import pytest

from bench.__main__ import build_parser, comparisons, main
from bench.report import growth_table, run_header
from bench.stats import Comparison, Series, linear_fit, median_table, ratio, ratio_table
from bench.timing import LoadSampler, RunClock, StepTime, load_summary, step_table, wall_time_line


def test_series_median_odd_and_even():
    assert Series("b", "c", [3.0, 1.0, 2.0]).median == 2.0
    assert Series("b", "c", [4.0, 1.0, 2.0, 3.0]).median == 2.5


def test_series_median_without_rounds():
    assert Series("b", "c", [], failures=2).median is None


@pytest.mark.parametrize(("top", "bottom", "expected"), [
    (2.0, 4.0, 0.5),
    (None, 4.0, None),
    (2.0, None, None),
    (2.0, 0.0, None),
])
def test_ratio_cases(top, bottom, expected):
    assert ratio(top, bottom) == expected


def test_ratio_table_marks_targets():
    series = [Series("job", "floor", [2.0, 2.0, 2.2]), Series("job", "ours", [2.1, 2.4, 2.1]),
              Series("suite", "-n 0", [100.0]), Series("suite", "-n 2", [80.0])]
    table = ratio_table(series, [Comparison("job", "ours", "floor", target_max=1.10),
                                 Comparison("suite", "-n 0", "-n 2", target_min=1.6),
                                 Comparison("job", "peer", "floor")])
    rows = table.splitlines()

    assert rows[2] == "| job | ours / floor | 1.05x | <= 1.10x | yes |"
    assert rows[3] == "| suite | -n 0 / -n 2 | 1.25x | >= 1.60x | no |"
    assert rows[4] == "| job | peer / floor | - | - | not measured |"


def test_median_table_counts_failures():
    table = median_table([Series("job", "ours", [3.0, 1.0], failures=1), Series("job", "peer", [], failures=3)])
    rows = table.splitlines()

    assert rows[2] == "| job | ours | 2 | 1 | 2.00 | 1.00 | 3.00 |"
    assert rows[3] == "| job | peer | 0 | 3 | - | - | - |"


def test_linear_fit_recovers_line():
    intercept, slope = linear_fit([(4.0, 1.2), (16.0, 2.4), (64.0, 7.2)])

    assert intercept == pytest.approx(0.8)
    assert slope == pytest.approx(0.1)


def test_linear_fit_needs_two_sizes():
    assert linear_fit([(4.0, 1.0), (4.0, 2.0)]) is None


def test_growth_table_fits_each_method():
    series = [Series("seeding 4 MB", "mirror pull", [1.4]), Series("seeding 4 MB", "save-load", [1.0]),
              Series("seeding 16 MB", "mirror pull", [2.6]), Series("seeding 16 MB", "save-load", [2.2]),
              Series("seeding 16+1 MB, base present", "mirror pull", [0.5])]
    rows = growth_table(series, {"4 MB": 4.0, "16 MB": 16.0}).splitlines()

    assert rows[2] == "| mirror push | - | - | none |"
    assert rows[3] == "| mirror pull | 1.00 | 0.1000 | 4, 16 MB |"
    assert rows[4] == "| save-load | 0.60 | 0.1000 | 4, 16 MB |"


def test_comparisons_only_for_measured_benchmarks():
    series = [Series("dind-job", "ours", [1.0]), Series("seeding 4 MB", "mirror pull", [1.0])]
    names = [(item.benchmark, item.numerator, item.denominator) for item in comparisons(series)]

    assert ("dind-job", "ours", "floor") in names
    assert ("seeding 4 MB", "mirror pull", "save-load") in names
    assert all(benchmark != "suite" for benchmark, _, _ in names)


def test_bench_command_rejects_unknown_benchmark(capsys):
    assert main(["--only", "dind-job,nonsense"]) == 2
    assert "--only nonsense: unknown benchmark" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--rounds", "--seed-rounds"])
def test_bench_command_rejects_zero_rounds(capsys, option):
    assert main([option, "0"]) == 2
    assert f"{option} 0: invalid; give a whole number of at least 1" in capsys.readouterr().err


def test_bench_command_rejects_invalid_sizes(capsys):
    assert main(["--seed-sizes", "4,big"]) == 2
    assert "--seed-sizes '4,big': invalid" in capsys.readouterr().err


def test_bench_command_rejects_empty_selection(capsys):
    assert main(["--only", ","]) == 2
    assert "--only ',': no benchmark named" in capsys.readouterr().err


def test_bench_command_rejects_huge_size(capsys):
    # Catches a size whose random bytes would not fit in memory (a MemoryError traceback before).
    assert main(["--seed-sizes", "4,999999"]) == 2
    assert "from 1 to 1024" in capsys.readouterr().err


def test_bench_command_checks_results_first(capsys, tmp_path):
    results = tmp_path / "a-file"
    results.write_text("")

    # Catches a results path that fails only after every round has run.
    assert main(["--only", "readiness", "--results", str(results)]) == 2
    assert f"--results {results}: cannot write there" in capsys.readouterr().err


def test_bench_command_rejects_bad_session_id(capsys, monkeypatch):
    monkeypatch.setenv("HARNESS_SESSION_ID", "ZZ")

    assert main(["--only", "readiness"]) == 2
    assert 'HARNESS_SESSION_ID: "ZZ" is invalid' in capsys.readouterr().err


def test_run_header_names_make_and_command(monkeypatch):
    args = build_parser().parse_args(["--only", "readiness"])
    monkeypatch.setenv("MAKELEVEL", "1")

    header = run_header(args, ["readiness"], "20.10.24", ["--only", "readiness"])

    assert header["command"] == "make bench, which ran python -m bench --only readiness"
    assert header["rounds"] == "3"
    # Seed and seeding facts belong only to runs that include those benchmarks.
    assert "seed host engine" not in header
    assert "seeding sizes" not in header


def test_run_header_without_make(monkeypatch):
    args = build_parser().parse_args(["--only", "seed,seeding", "--seed-sizes", "4,8"])
    monkeypatch.delenv("MAKELEVEL", raising=False)

    header = run_header(args, ["seed", "seeding"], "20.10.24", ["--only", "seed,seeding", "--seed-sizes", "4,8"])

    assert header["command"] == "python -m bench --only seed,seeding --seed-sizes 4,8"
    assert header["rounds"] == "3, the seed benchmark 1"
    assert header["seed host engine"] == "sandbox"
    assert header["seeding sizes"] == "4,8 MB"


def test_run_clock_adds_up_repeated_step(monkeypatch):
    now = iter([100.0, 110.0, 200.0, 205.0])
    monkeypatch.setattr("bench.timing.time.monotonic", lambda: next(now))
    readings = iter([1.0, 2.0, 4.0, 5.0])
    clock = RunClock(started=0.0, read_load=lambda: next(readings))

    with clock.step("seed"):
        pass
    clock.loads.append(9.0)
    with clock.step("seed"):
        clock.loads.append(3.0)

    assert clock.steps["seed"].seconds == 15.0
    assert clock.steps["seed"].loads == [1.0, 2.0, 4.0, 3.0, 5.0]
    assert clock.loads == [1.0, 2.0, 9.0, 4.0, 3.0, 5.0]


def test_run_clock_times_failing_step():
    clock = RunClock()

    with pytest.raises(RuntimeError):
        with clock.step("dind-job"):
            raise RuntimeError("round crashed")

    assert "dind-job" in clock.steps
    assert clock.steps["dind-job"].seconds >= 0.0


@pytest.mark.parametrize(("seconds", "expected"), [
    (600.0, "10.0 min, within the 15-minute limit"),
    (900.0, "15.0 min, within the 15-minute limit"),
    (903.0, "15.1 min, over the 15-minute limit"),
])
def test_wall_time_line_against_limit(seconds, expected):
    assert wall_time_line(seconds) == expected


def test_step_table_rows_in_minutes():
    clock = RunClock(steps={"readiness": StepTime(90.0, [1.0, 4.0, 2.0]), "seed": StepTime(330.0)})
    rows = step_table(clock).splitlines()

    assert rows[2] == "| readiness | 1.5 | min 1.0, median 2.0, max 4.0 |"
    assert rows[3] == "| seed | 5.5 | not sampled |"


def test_load_summary_without_samples():
    assert load_summary([]) == "not sampled"


def test_load_sampler_samples_until_exit():
    clock = RunClock()

    with LoadSampler(clock, interval=0.01):
        time.sleep(0.1)
    count = len(clock.loads)
    time.sleep(0.05)

    assert count >= 2
    assert len(clock.loads) == count
    assert all(load >= 0.0 for load in clock.loads)
