"""The ``harness`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from harness.errors import HarnessError

log = logging.getLogger(__name__)


def _engine(args: argparse.Namespace) -> int:
    from harness import engine

    if args.action == "up":
        engine.up()
    elif args.action == "down":
        if not engine.stop_dockerd():
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
    from harness import doctor

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
    for kind, rows in (("container", found.containers), ("network", found.networks), ("volume", found.volumes)):
        for name, session in rows:
            print(f"{verb} {kind} {name} (session {session or '?'})")
    print(f"{found.count()} labelled resources {'left over' if args.dry_run else 'removed'}")
    return 0


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

    clean_parser = commands.add_parser("clean", help="remove what dead harness sessions left on the engine")
    clean_parser.add_argument("--dry-run", action="store_true", help="list, remove nothing")
    clean_parser.add_argument("--all", action="store_true",
                              help="also resources of sessions whose owner process still runs")
    clean_parser.add_argument("--session", help="only this session id")
    clean_parser.set_defaults(handler=_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``harness`` command; return its exit code (2 for invalid input, 1 for failures)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except HarnessError as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
