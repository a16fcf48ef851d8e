"""Worker process of the matrix: ``python -m harness.matrix_worker CELLS.json RESULTS.json``.

Runs the cells of CELLS.json one after another as one harness session, on one sandbox host
engine unless the spec's ``host_engine`` is ``local``, and writes their ``CellResult.to_dict()``
list to RESULTS.json. Its own session keeps its registry wiring, pull mirror and sandbox apart
from the other workers', and its teardown runs at a normal exit or on Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

from harness import cleanup, labels, matrix
from harness.engine import require_engine
from harness.errors import HarnessError
from harness.host import HostEngine, open_sandbox
from harness.scenario import load_scenario


def main(argv: list[str] | None = None) -> int:
    """Run the cells of the spec file and write the results file; return the exit status."""
    spec_path, result_path = (Path(argument) for argument in (argv or sys.argv[1:]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    spec = json.loads(spec_path.read_text())
    try:
        scenario = load_scenario(spec["scenario"])
        client = require_engine()
    except HarnessError as error:
        print(f"matrix worker: {error}", file=sys.stderr)
        return error.exit_code

    # The matrix stops a worker with SIGTERM; as KeyboardInterrupt it unwinds every run's teardown.
    signal.signal(signal.SIGTERM, _interrupt)
    jobs = tuple(spec.get("jobs") or ())
    host = None
    try:
        host = open_sandbox(client) if spec.get("host_engine", "sandbox") == "sandbox" else HostEngine.local(client)
        results = [matrix.run_cell(client, scenario, matrix.cell_from_dict(cell), jobs, host)
                   for cell in spec["cells"]]
    except KeyboardInterrupt:
        print("matrix worker: interrupted; what its runs created has been removed", file=sys.stderr)
        return 130
    finally:
        if host is not None:
            host.close()
        # Cache volumes outlive their runs, as GitLab Runner keeps them; this session is over.
        cleanup.clean(client, session=labels.session_id())
    result_path.write_text(json.dumps([result.to_dict() for result in results]))
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
