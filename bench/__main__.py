"""`python -m bench`: run the selected benchmarks in interleaved rounds and write bench/results/."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import docker.errors

from bench import dind_job, pipelines_bench, readiness, report, seeding, timing
from bench.rounds import RoundFailed, run_rounds
from bench.stats import Comparison, Series
from harness import cleanup, engine, interrupts, labels
from harness.errors import HarnessError

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_SELECTION = ("dind-job", "readiness", "seed", "seeding")
ALL_BENCHMARKS = (*DEFAULT_SELECTION, "suite")
PEER_IMAGES = (dind_job.PEER_HELPER_IMAGE, "sumina46/wait-for-it:latest")
# Each seeding image is built from random bytes held in memory, so a size is capped at 1 GiB.
MAX_SEED_SIZE_MB = 1024


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of the benchmark command."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per benchmark (default 3)")
    parser.add_argument("--seed-rounds", type=int, default=1,
                        help="rounds of the seed benchmark, whose runs take 1 to 3 minutes each "
                             "(default 1, while the other benchmarks use --rounds)")
    parser.add_argument("--seed-host-engine", choices=["sandbox", "local"], default="sandbox",
                        help="host engine of the seed runs: a sandbox engine as the CLI's default "
                             "(default), or the real engine, where the DooD run's teardown removes "
                             "unlabelled containers and images that other processes create meanwhile")
    parser.add_argument("--only", default=",".join(DEFAULT_SELECTION),
                        help=f"comma-separated benchmarks out of {', '.join(ALL_BENCHMARKS)} "
                             f"(default: {','.join(DEFAULT_SELECTION)}; suite takes 20+ minutes per round)")
    parser.add_argument("--seed-sizes", default="4,16,64",
                        help="image sizes in MB for the seeding benchmark (default 4,16,64)")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results",
                        help="directory for results.md and results.png (default bench/results)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return 0 when every round succeeded, 1 otherwise, 2 for invalid arguments."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for name in ("urllib3", "docker"):
        logging.getLogger(name).setLevel(logging.WARNING)

    selection = [name.strip() for name in args.only.split(",") if name.strip()]
    problem = _invalid_argument(args, selection) or labels.session_id_problem() or _results_problem(args.results)
    if problem:
        print(f"bench: error: {problem}", file=sys.stderr)
        return 2

    try:
        client = engine.require_engine()
    except HarnessError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return error.exit_code
    problem = _missing_tools(client, selection)
    if problem:
        print(f"bench: error: {problem}", file=sys.stderr)
        return 2

    interrupts.install()
    try:
        # What killed runs left (privileged dind daemons, mirrors, seeding images) goes first.
        cleanup.clean(client, dead_only=True)
        return _run_and_report(client, args, selection, sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        print("bench: interrupted; what this run created has been removed and no results were written",
              file=sys.stderr)
        return interrupts.exit_status()


def _run_and_report(client, args, selection: list[str], argv: list[str]) -> int:
    """Run the selected benchmarks, remove what they created, and write the results."""
    work_dir = BENCH_DIR / ".work" / "logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    clock = timing.RunClock()
    with timing.LoadSampler(clock):
        try:
            series, megabytes = _run_selected(client, selection, args, work_dir, clock)
        finally:
            cleanup.clean(client, session=labels.session_id())
    total = clock.total()

    _write_results(client, args, selection, argv, series, megabytes, clock, total)
    print(f"logs in {work_dir}")
    print(f"wall time of the benchmarks: {timing.wall_time_line(total)}")
    return 0 if all(item.failures == 0 for item in series) else 1


def _invalid_argument(args, selection: list[str]) -> str:
    """Return the first invalid option with its value and the fix, or "" when all are valid."""
    if not selection:
        return f"--only {args.only!r}: no benchmark named; use one or more of {', '.join(ALL_BENCHMARKS)}"
    unknown = [name for name in selection if name not in ALL_BENCHMARKS]
    if unknown:
        return f"--only {','.join(unknown)}: unknown benchmark; use {', '.join(ALL_BENCHMARKS)}"
    for option, value in (("--rounds", args.rounds), ("--seed-rounds", args.seed_rounds)):
        if value < 1:
            return f"{option} {value}: invalid; give a whole number of at least 1"
    sizes = [size.strip() for size in args.seed_sizes.split(",") if size.strip()]
    if not sizes or not all(size.isdigit() and 0 < int(size) <= MAX_SEED_SIZE_MB for size in sizes):
        return (f"--seed-sizes {args.seed_sizes!r}: invalid; give whole megabytes from 1 to {MAX_SEED_SIZE_MB} "
                f"such as 4,16,64")
    return ""


def _results_problem(directory: Path) -> str:
    """Return why results cannot be written to ``directory``, or "" when they can.

    Checked before the first round, so a typo does not cost a whole run's measurements.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as error:
        return f"--results {directory}: cannot write there ({error.strerror or error}); pass a writable directory"
    return ""


def _write_results(client, args, selection: list[str], argv: list[str], series: list[Series],
                   megabytes: dict[str, float], clock: timing.RunClock, total: float) -> None:
    """Write results.md and results.png, and print the markdown page."""
    args.results.mkdir(parents=True, exist_ok=True)
    header = report.run_header(args, selection, client.version().get("Version", "?"), argv)
    header["wall time"] = timing.wall_time_line(total)
    header["load average"] = (f"{timing.load_summary(clock.loads)} (1 minute, sampled every "
                              f"{timing.LOAD_SAMPLE_INTERVAL:.0f} s, on {os.cpu_count()} CPUs)")
    if "readiness" in selection:
        header["dind daemons"] = "; ".join(f"{tag}: {version}" for tag, version in
                                           readiness.daemon_versions(client).items())
    text = report.write_markdown(args.results / "results.md", series, comparisons(series), header, megabytes,
                                 timing.step_table(clock))
    report.write_chart(args.results / "results.png", series, megabytes)
    print(text)
    print(f"written: {args.results / 'results.md'}, {args.results / 'results.png'}")


def _run_selected(client, selection: list[str], args, work_dir: Path,
                  clock: timing.RunClock) -> tuple[list[Series], dict[str, float]]:
    series: list[Series] = []
    megabytes: dict[str, float] = {}
    steps = {
        "dind-job": lambda: run_rounds("dind-job", dind_job.contenders(work_dir), args.rounds),
        "readiness": lambda: run_rounds("dind readiness", readiness.contenders(client), args.rounds),
        "seed": lambda: run_rounds("seed", pipelines_bench.seed_contenders(work_dir, args.seed_host_engine),
                                  args.seed_rounds),
        "suite": lambda: run_rounds("suite", pipelines_bench.suite_contenders(work_dir), args.rounds),
    }
    for name in selection:
        # One benchmark's crash (an image that another process removed, say) must not lose the
        # results of the others, so it is logged and reported as a failed series.
        try:
            with clock.step(name):
                if name == "seeding":
                    result = seeding.run(client, [int(size) for size in args.seed_sizes.split(",") if size.strip()],
                                         args.rounds)
                    series += result.series
                    megabytes = result.megabytes
                else:
                    series += steps[name]()
        except (docker.errors.DockerException, HarnessError, RoundFailed, OSError) as error:
            log.error("benchmark %s failed: %s", name, error)
            series.append(Series(name, "crashed", failures=1))
        log.info("benchmark %s finished in %.1f min, %.1f min into the run",
                 name, clock.steps[name].seconds / 60, clock.total() / 60)
    return series, megabytes


def comparisons(series: list[Series]) -> list[Comparison]:
    """Return the ratios the report quotes, with the targets the harness aims for."""
    wanted = [Comparison("dind-job", "ours", "floor", target_max=1.10),
              Comparison("dind-job", "ours", "gitlab-ci-local", target_max=0.70),
              Comparison("dind-job", "gitlab-ci-local", "floor"),
              Comparison("dind-job", "ours sandbox", "ours"),
              Comparison("seed", "ours dind", "ours dood"),
              Comparison("suite", "-n 0", "-n 2", target_min=1.6)]
    wanted += [Comparison(item.benchmark, "mirror pull", "save-load") for item in series
               if item.benchmark.startswith("seeding") and item.contender == "mirror pull"]
    benchmarks = {item.benchmark for item in series}
    return [comparison for comparison in wanted if comparison.benchmark in benchmarks]


def _missing_tools(client, selection: list[str]) -> str:
    """Return what a selected benchmark needs and lacks, with the fix, or "" when nothing is missing."""
    if "dind-job" in selection:
        if not dind_job.GITLAB_CI_LOCAL.exists():
            return (f"{dind_job.GITLAB_CI_LOCAL} not found; run `make bench`, which installs "
                    f"gitlab-ci-local {dind_job.GITLAB_CI_LOCAL_VERSION} with npm")
        if shutil.which("rsync") is None:
            return "rsync not found; gitlab-ci-local needs it on the host: apt-get install rsync"
        for image in PEER_IMAGES:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                return f"image {image} not found; run `python -m harness.cli images build`"
    return ""


if __name__ == "__main__":
    sys.exit(main())
