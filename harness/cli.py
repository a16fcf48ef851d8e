"""The ``harness`` command line."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from harness import interrupts, labels
from harness.errors import HarnessError

log = logging.getLogger(__name__)

# GitLab's rule for CI/CD variable keys.
_VARIABLE_KEY = re.compile(r"[A-Za-z0-9_]{1,255}")


def _engine(args: argparse.Namespace) -> int:
    from harness import engine

    if args.action == "up":
        engine.up()
    elif args.action == "down":
        if not engine.down():
            print("no harness-started dockerd is running")
    return _engine_status()


def _engine_status() -> int:
    from harness import engine

    status = engine.status(probe=False)
    if not status.running:
        print(f"engine: not running ({status.host})")
        return 1
    origin = "started by the harness" if status.started_by_harness else "external"
    print(f"engine: Docker {status.version} (API {status.api_version}), {status.storage_driver}, "
          f"cgroup v{status.cgroup_version}, runtime {status.default_runtime}, {origin}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from harness import doctor, engine

    # Without an engine no other check can run, so this is reported like any command's error.
    engine.require_engine()
    checks = doctor.run_checks()
    print(doctor.render(checks))
    return 0 if all(check.ok for check in checks) else 1


def _images(args: argparse.Namespace) -> int:
    from harness import engine, images

    client = engine.require_engine()
    if args.action == "build":
        images.ensure_images(client, names=args.names or None, pull=args.pull)
    print(images.render_image_table(images.list_images(client)))
    return 0


def _clean(args: argparse.Namespace) -> int:
    from harness import cleanup, engine

    found = cleanup.clean(engine.require_engine(), session=args.session, dead_only=not args.all,
                          dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for kind, rows in (("container", found.containers), ("network", found.networks), ("volume", found.volumes),
                       ("image", found.images)):
        for name, session in rows:
            print(f"{verb} {kind} {name} (session {session or '?'})")
    print(f"{found.count()} labelled resources {'left over' if args.dry_run else 'removed'}")
    return 0


def _parse_variables(pairs: list[str], masked: bool) -> list:
    """Turn ``KEY=VALUE`` options into project variables, checked as GitLab checks its settings."""
    from harness.errors import InputError
    from harness.variables import Variable

    option = "--masked-var" if masked else "--var"
    variables = []
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            # The text may be the secret itself, so a masked one is not repeated in the error.
            described = "the value" if masked else repr(pair)
            raise InputError("command line", option, f"{described} is not KEY=VALUE", f"write {option} KEY=VALUE")
        if not _VARIABLE_KEY.fullmatch(key):
            raise InputError("command line", f"{option} {key}", "invalid variable name",
                             "use at most 255 letters, digits and '_'")
        # GitLab rejects such values too, because masking a short or multi-line value breaks the log.
        if masked and (len(value) < 8 or "\n" in value):
            raise InputError("command line", f"{option} {key}",
                             "a masked value must be a single line of at least 8 characters",
                             "use a longer value, or pass it with --var so that it is not masked")
        variables.append(Variable(key, value, masked=masked, public=False))
    return variables


def _run(args: argparse.Namespace) -> int:
    results = _run_modes(args)
    return 0 if all(result.succeeded for result in results) else 1


def _runner_version(version: str | None) -> str | None:
    """Check a ``--runner-version`` value such as ``18.6.0``; return it, or None when not given."""
    from harness.errors import InputError

    if version is not None and not re.fullmatch(r"v?\d+\.\d+(\.\d+)?", version):
        raise InputError("--runner-version", version, "not a GitLab Runner version",
                         "give MAJOR.MINOR or MAJOR.MINOR.PATCH, such as 18.6.0")
    return version


def _matrix(args: argparse.Namespace) -> int:
    from harness import engine, matrix, matrix_report, scenario

    loaded = scenario.load_scenario(args.scenario)
    if args.parallel < 1:
        from harness.errors import InputError

        raise InputError("--parallel", str(args.parallel), "must be at least 1", "pass --parallel 1 or more")
    cells = matrix.plan(loaded, args.mode or None, args.dind_version or None, args.runner_compat or None)
    client = engine.require_engine()
    log.info("matrix of %s: %d cells", loaded.name, len(cells))
    matrix.ensure_cell_images(client, cells)

    results = matrix.run_matrix(client, loaded, cells, args.parallel, tuple(args.job), args.host_engine)
    print(matrix_report.render_grid(results))
    matrix_report.write_junit(results, Path(args.junit), suite=f"matrix-{loaded.name}")
    print(f"JUnit XML: {args.junit}")
    return 0 if all(result.passed for result in results) else 1


def _nightly_ci(args: argparse.Namespace) -> int:
    from harness import nightly_ci

    return nightly_ci.main(["write", *(["--output", args.output] if args.output else [])])


def _run_modes(args: argparse.Namespace) -> list:
    """Run the scenario, or the user's own pipeline, in every selected mode and print each result."""
    from harness import engine, run

    loaded, modes = _scenario_and_modes(args)
    options = run.RunOptions(in_process=args.debug_in_process, branch=args.branch,
                             variables=_parse_variables(args.var, False) + _parse_variables(args.masked_var, True),
                             jobs=tuple(getattr(args, "job", ())),
                             runner_version=_runner_version(getattr(args, "runner_version", None)),
                             runner_image=getattr(args, "runner_image", None))
    client = engine.require_engine()

    # Every mode's inputs are checked first, so a mistake in the last mode is reported before the
    # first mode has started anything.
    inputs = {mode: run.check_inputs(client, loaded, mode, options) for mode in modes}
    options.host = _open_host(client, args.host_engine)
    results = []
    try:
        for mode in modes:
            result = run.run_scenario(client, loaded, mode, options, inputs=inputs[mode])
            print(_report(result, show_traces=args.show_traces))
            results.append(result)
    finally:
        options.host.close()
    return results


def _open_host(client, kind: str):
    """Return the host engine of ``kind``: a new sandbox on ``client``'s engine, or that engine itself."""
    from harness import host

    if kind == "local":
        log.warning(host.LOCAL_WARNING)
        return host.HostEngine.local(client)
    return host.open_sandbox(client)


def _scenario_and_modes(args: argparse.Namespace) -> tuple:
    """Return the scenario to run and its modes, from a scenario folder or from --pipeline and friends."""
    from harness import own_pipeline, scenario
    from harness.errors import InputError

    own = any(getattr(args, option, None) for option in ("pipeline", "runner_config", "project"))
    if own and args.scenario:
        raise InputError("command line", "scenario", "given together with --pipeline, --runner-config or --project",
                         "pass either a scenario folder or your own files, not both")
    if own:
        return own_pipeline.scenario_from_arguments(args)
    if not args.scenario:
        raise InputError("command line", "scenario", "missing",
                         "pass a scenario folder or name, or --pipeline, --runner-config and --project")
    loaded = scenario.load_scenario(args.scenario)
    return loaded, list(loaded.modes) if args.mode == "both" else [args.mode]


def _write_report(args: argparse.Namespace) -> int:
    from harness import report

    _check_writable(Path(args.output), "-o")
    results = _run_modes(args)
    title = f"Placement report: {results[0].scenario}" if results else "Placement report"
    path = report.write_report(results, args.output, title=title)
    print(f"placement report written to {path}")
    return 0 if all(result.succeeded for result in results) else 1


def _check_writable(path: Path, option: str) -> None:
    """Raise InputError unless a file can be created at ``path``, before a run spends minutes.

    Creating and removing the file is the only reliable check: permissions alone do not tell
    that a directory such as /proc rejects new files.
    """
    from harness.errors import InputError

    if path.is_dir():
        raise InputError("command line", option, f"{path} is a directory", "name a file such as report.html")
    if not path.parent.is_dir():
        raise InputError("command line", option, f"directory {path.parent} does not exist",
                         "create it first or name a file in an existing directory")
    existed = path.exists()
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise InputError("command line", option, f"{path} cannot be written: {error.strerror}",
                         "name a file in a writable directory") from error
    if not existed:
        path.unlink()


def _report(result, show_traces: bool) -> str:
    parts = [f"== {result.scenario} in {result.mode} mode (host: {result.host}) ==", result.summary(),
             result.placement.table()]
    if result.registry_tags:
        tags = ", ".join(f"{repo}:{tag}" for repo, tags in result.registry_tags.items() for tag in tags)
        parts.append(f"registry holds: {tags}")
    if show_traces:
        parts += [f"--- trace of {job.name} ---\n{job.trace}" for job in result.jobs if job.trace]
    return "\n".join(parts) + "\n"


def _demo(args: argparse.Namespace) -> int:
    args.scenario, args.mode, args.var, args.masked_var, args.branch = "seed", "both", [], [], None
    args.debug_in_process, args.job = False, []
    return _run(args)


def _scenarios(args: argparse.Namespace) -> int:
    from harness import scenario

    rows = []
    for item in scenario.list_scenarios():
        modes = ", ".join(name if files.kind == name else f"{name} ({files.kind})" for name, files in item.modes.items())
        rows.append((item.name, modes, ", ".join(item.reports) or "-", item.purpose))
    widths = [max((len(row[column]) for row in rows), default=0) for column in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
    return 0


def _pod(args: argparse.Namespace) -> int:
    import time

    from harness import engine
    from harness.kubernetes_run import PodRun
    from harness.kubernetes_spec import load_pod

    spec = load_pod(args.file)
    client = engine.require_engine()
    host = _open_host(client, args.host_engine)
    try:
        with PodRun(client, spec, backoff_scale=args.backoff_scale, host=host) as run:
            log.info("pod %s runs for %d s before the harness reads its daemons and deletes it", spec.name, args.seconds)
            time.sleep(args.seconds)
            run.observe()
    finally:
        host.close()
    result = run.result()
    print(result.render())
    healthy = all(row["state"] == "running" or (row["state"] == "terminated" and row["exit_codes"][-1:] == [0])
                  for row in result.containers)
    return 0 if healthy and all(probe.docker_api for probe in result.socket_probes) else 1


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one sub-command per concept."""
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (DEBUG level)")
    commands = parser.add_subparsers(dest="command", required=True)

    engine_parser = commands.add_parser("engine", help="start, stop or describe the Docker engine")
    engine_parser.add_argument("action", choices=["up", "down", "status"])
    engine_parser.set_defaults(handler=_engine)

    doctor_parser = commands.add_parser("doctor", help="check the engine, images and registry")
    doctor_parser.set_defaults(handler=_doctor)

    images_parser = commands.add_parser("images", help="build or list the stand-in images")
    images_parser.add_argument("action", choices=["build", "list"])
    images_parser.add_argument("names", nargs="*", help="recipes or tags to build (default: all)")
    images_parser.add_argument("--pull", action="store_true",
                               help="pull the real upstream images instead of building stand-ins")
    images_parser.set_defaults(handler=_images)

    run_parser = commands.add_parser("run", help="run a scenario's pipeline, or your own, and print where things ended up")
    _add_run_arguments(run_parser)
    run_parser.set_defaults(handler=_run)

    matrix_parser = commands.add_parser(
        "matrix", help="run a scenario over mode x engine version x runner generation and print a grid")
    matrix_parser.add_argument("--scenario", required=True, help="scenario folder, or a name under scenarios/")
    matrix_parser.add_argument("--mode", action="append", default=[], metavar="MODE",
                               help="a mode of the scenario (repeatable; default: every mode)")
    matrix_parser.add_argument("--dind-version", action="append", default=[], metavar="LINE",
                               help="an engine line such as 26.1 (repeatable; default: every line)")
    matrix_parser.add_argument("--runner-compat", action="append", default=[], metavar="VERSION",
                               help="a GitLab Runner version to imitate, such as 15.11.0 (repeatable; "
                                    "default: 15.11.0 and the current runner)")
    matrix_parser.add_argument("--parallel", type=int, default=2, metavar="N",
                               help="DinD cells run at once (default 2); DooD cells always run one at a time")
    matrix_parser.add_argument("--junit", default="matrix-junit.xml", metavar="FILE.xml",
                               help="where to write the JUnit XML, one case per cell (default: matrix-junit.xml)")
    matrix_parser.add_argument("--job", action="append", default=[], metavar="NAME",
                               help="run only this job in every cell (repeatable)")
    _add_host_argument(matrix_parser)
    matrix_parser.set_defaults(handler=_matrix)

    nightly_parser = commands.add_parser(
        "nightly-ci", help="write ci/nightly.gitlab-ci.yml, the matrix as one GitLab job per cell")
    nightly_parser.add_argument("--output", default=None, metavar="FILE",
                                help="where to write the pipeline (default: ci/nightly.gitlab-ci.yml)")
    nightly_parser.set_defaults(handler=_nightly_ci)

    report_parser = commands.add_parser("report", help="run like `run` and write an HTML placement report")
    _add_run_arguments(report_parser)
    report_parser.add_argument("-o", "--output", default="placement-report.html", metavar="FILE.html",
                               help="where to write the report (default: placement-report.html)")
    report_parser.set_defaults(handler=_write_report)

    demo_parser = commands.add_parser("demo", help="run the seed pipeline in DinD and DooD")
    demo_parser.add_argument("--show-traces", action="store_true", help="print every job's trace")
    _add_host_argument(demo_parser)
    demo_parser.set_defaults(handler=_demo)

    scenarios_parser = commands.add_parser("scenarios", help="list the bundled scenarios")
    scenarios_parser.add_argument("action", choices=["list"])
    scenarios_parser.set_defaults(handler=_scenarios)

    pod_parser = commands.add_parser("pod", help="run a Kubernetes Pod manifest on the engine as a kubelet would")
    pod_parser.add_argument("action", choices=["run"])
    pod_parser.add_argument("file", help="pod manifest (apiVersion: v1, kind: Pod)")
    pod_parser.add_argument("--seconds", type=int, default=30,
                            help="how long the pod runs before its daemons are read and it is deleted (default 30)")
    pod_parser.add_argument("--backoff-scale", type=float, default=1.0,
                            help="factor on the kubelet's restart back-off of 10 s doubling to 300 s (default 1.0)")
    _add_host_argument(pod_parser)
    pod_parser.set_defaults(handler=_pod)

    clean_parser = commands.add_parser("clean", help="remove what dead harness sessions left on the engine")
    clean_parser.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    clean_parser.add_argument("--all", action="store_true",
                              help="also resources of sessions whose owner process still runs")
    clean_parser.add_argument("--session", help="only this session id")
    clean_parser.set_defaults(handler=_clean)
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", help="scenario folder, or a name under scenarios/")
    parser.add_argument("--mode", default="both",
                        help="a mode name of the scenario (such as dind or dood), or both for every mode")
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                        help="extra project variable (repeatable)")
    parser.add_argument("--masked-var", action="append", default=[], metavar="KEY=VALUE",
                        help="extra masked project variable, hidden in traces (repeatable)")
    parser.add_argument("--branch", help="run the pipeline for this branch (default: the scenario's)")
    parser.add_argument("--show-traces", action="store_true", help="print every job's trace")
    parser.add_argument("--debug-in-process", action="store_true",
                        help="run the executor in this process instead of a runner container")
    _add_host_argument(parser)
    parser.add_argument("--runner-version", metavar="VERSION",
                        help="GitLab Runner version whose docker executor to imitate, such as 15.11.0 for "
                             "a container per stage or 18.6.0 for --link (default: the current runner)")
    parser.add_argument("--runner-image", metavar="IMAGE",
                        help="run the jobs with this GitLab Runner image (such as gitlab/gitlab-runner:v18.6.0) "
                             "through `run-single` instead of the harness's runner; it must exist locally")
    own = parser.add_argument_group("your own pipeline (instead of a scenario)")
    own.add_argument("--pipeline", action="append", default=[], metavar="[MODE=]PATH",
                     help="your .gitlab-ci.yml; MODE=PATH gives one per mode (dind, dood)")
    own.add_argument("--runner-config", action="append", default=[], metavar="[MODE=]PATH",
                     help="your runner config.toml; --mode both needs dind=PATH and dood=PATH")
    own.add_argument("--project", metavar="DIR", help="the folder committed as the project's repository")
    own.add_argument("--watch", action="append", default=[], metavar="PATH",
                     help="absolute directory listed on every daemon and in job containers (repeatable)")
    parser.add_argument("--job", action="append", default=[], metavar="NAME",
                        help="run only this job, report the others as skipped (repeatable)")


def _add_host_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host-engine", choices=["sandbox", "local"], default="sandbox",
                        help="engine that plays the CI host: a disposable sandbox engine in a privileged "
                             "container (default), or the real engine, which DooD jobs can then change")


def main(argv: list[str] | None = None, *, sweep_session: bool | None = None) -> int:
    """Run the ``harness`` command; return its exit code (2 for invalid input, 1 for failures).

    With ``sweep_session``, the end of the command removes every resource that carries this
    process's session label, including what an interrupted teardown left. That is right only
    when the command owns the process. When None, the sweep runs when ``argv`` is None, that
    is when main runs as the program (console script or ``python -m harness.cli``). A caller
    that passes ``argv``, such as a test in a pytest worker, shares the session label with its
    own sandbox and networks, so the sweep would remove them.
    """
    if sweep_session is None:
        sweep_session = argv is None
    args = build_parser().parse_args(argv)
    problem = labels.session_id_problem()
    if problem:
        print(f"harness: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)
    interrupts.install()
    try:
        if sweep_session and args.command in SWEEPING_COMMANDS:
            _remove_dead_sessions()
        return args.handler(args)
    except HarnessError as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        if sweep_session:
            _remove_session_leftovers()
        print("harness: interrupted; what this run created has been removed", file=sys.stderr)
        return interrupts.exit_status()
    finally:
        if sweep_session:
            _remove_session_leftovers()


# Commands that start containers; each first removes what killed sessions left.
SWEEPING_COMMANDS = frozenset({"run", "report", "demo", "matrix", "pod"})


def _remove_dead_sessions() -> None:
    """Remove what sessions whose owner process is gone left on the engine, as a new pytest session does."""
    from harness import cleanup, engine

    client = engine.connect()
    if client is not None:
        cleanup.clean(client, dead_only=True)


def _remove_session_leftovers() -> None:
    """Remove what this process's session still has on the engine (cache volumes, for example)."""
    from harness import cleanup, engine

    client = engine.connect()
    if client is not None:
        cleanup.clean(client, session=labels.session_id())


if __name__ == "__main__":
    sys.exit(main())
