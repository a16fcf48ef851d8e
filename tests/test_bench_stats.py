"""Medians, ratios and tables of the benchmark report (pure formatting, no engine)."""

import pytest

from bench.__main__ import comparisons, main
from bench.report import growth_table
from bench.stats import Comparison, Series, linear_fit, median_table, ratio, ratio_table


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


def test_bench_command_rejects_zero_rounds(capsys):
    assert main(["--rounds", "0"]) == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err


def test_bench_command_rejects_invalid_sizes(capsys):
    assert main(["--seed-sizes", "4,big"]) == 2
    assert "--seed-sizes '4,big': invalid" in capsys.readouterr().err
