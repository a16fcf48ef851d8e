"""`python -m bench`: run the selected benchmarks in interleaved rounds and write bench/results/."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import docker.errors

from bench import dind_job, pipelines_bench, readiness, report, seeding
from bench.rounds import RoundFailed, run_rounds
from bench.stats import Comparison, Series
from harness.errors import HarnessError

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_SELECTION = ("dind-job", "readiness", "seed", "seeding")
ALL_BENCHMARKS = (*DEFAULT_SELECTION, "suite")
PEER_IMAGES = (dind_job.PEER_HELPER_IMAGE, "sumina46/wait-for-it:latest")


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of the benchmark command."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per benchmark (default 3)")
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
    unknown = [name for name in selection if name not in ALL_BENCHMARKS]
    if unknown or args.rounds < 1:
        print(f"bench: error: --only {','.join(unknown)}: unknown benchmark; use {', '.join(ALL_BENCHMARKS)}"
              if unknown else "bench: error: --rounds must be at least 1", file=sys.stderr)
        return 2
    sizes = [size.strip() for size in args.seed_sizes.split(",") if size.strip()]
    if not sizes or not all(size.isdigit() and int(size) > 0 for size in sizes):
        print(f"bench: error: --seed-sizes {args.seed_sizes!r}: invalid; give whole megabytes such as 4,16,64",
              file=sys.stderr)
        return 2

    from harness import cleanup, engine, labels

    client = engine.require_engine()
    problem = _missing_tools(client, selection)
    if problem:
        print(f"bench: error: {problem}", file=sys.stderr)
        return 2

    work_dir = BENCH_DIR / ".work" / "logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        series, megabytes = _run_selected(client, selection, args, work_dir)
    finally:
        cleanup.clean(client, session=labels.session_id())

    args.results.mkdir(parents=True, exist_ok=True)
    header = report.run_header(args.rounds, selection, client.version().get("Version", "?"))
    if "readiness" in selection:
        header["dind daemons"] = "; ".join(f"{tag}: {version}" for tag, version in
                                           readiness.daemon_versions(client).items())
    text = report.write_markdown(args.results / "results.md", series, comparisons(series), header, megabytes)
    report.write_chart(args.results / "results.png", series, megabytes)
    print(text)
    print(f"written: {args.results / 'results.md'}, {args.results / 'results.png'}; logs in {work_dir}")
    return 0 if all(item.failures == 0 for item in series) else 1


def _run_selected(client, selection: list[str], args, work_dir: Path) -> tuple[list[Series], dict[str, float]]:
    series: list[Series] = []
    megabytes: dict[str, float] = {}
    steps = {
        "dind-job": lambda: run_rounds("dind-job", dind_job.contenders(work_dir), args.rounds),
        "readiness": lambda: run_rounds("dind readiness", readiness.contenders(client), args.rounds),
        "seed": lambda: run_rounds("seed", pipelines_bench.seed_contenders(work_dir), args.rounds),
        "suite": lambda: run_rounds("suite", pipelines_bench.suite_contenders(work_dir), args.rounds),
    }
    for name in selection:
        # One benchmark's crash (an image that another process removed, say) must not lose the
        # results of the others, so it is logged and reported as a failed series.
        try:
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
