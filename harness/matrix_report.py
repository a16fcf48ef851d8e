"""The matrix's results as a text grid for people and as JUnit XML for CI, one case per cell."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from harness.matrix import CellResult
from harness.variables import mask

# Job traces carry ANSI colours and section markers, whose control characters XML 1.0 forbids.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_XML_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _xml_text(text: str) -> str:
    return _XML_FORBIDDEN.sub("", _ANSI_ESCAPE.sub("", text))


def _where(result: CellResult) -> str:
    """Summarise ``image_daemons`` as ``host``, ``dind x2`` or ``host + dind x2``."""
    dind = [daemon for daemon in result.image_daemons if daemon.startswith("dind:")]
    parts = ["host"] if "host" in result.image_daemons else []
    if dind:
        parts.append(f"dind x{len(dind)}")
    return " + ".join(parts) or "-"


def _ready(result: CellResult) -> str:
    if result.dind_ready is None:
        return "-"
    transport = "plain TCP" if result.dind_plain_tcp else "TLS"
    return f"{result.dind_ready:.1f} s {transport}"


def render_grid(results: list[CellResult]) -> str:
    """Return one aligned line per cell: mode, engine, runner, result, dind ready time, image daemons."""
    table = [("MODE", "ENGINE", "RUNNER", "RESULT", "DIND READY", "IMAGES ON", "SECONDS")]
    for result in results:
        cell = result.cell
        table.append((cell.mode, cell.engine.name, cell.runner_version, "pass" if result.passed else "FAIL",
                      _ready(result), _where(result), f"{result.seconds:.1f}"))
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in table]

    failed = [result for result in results if not result.passed]
    lines.append(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    for result in failed:
        lines += [f"  {result.cell.name}: {problem}" for problem in result.problems]
    return "\n".join(lines)


def junit_xml(results: list[CellResult], suite: str = "harness-matrix", secrets: list[str] = ()) -> str:
    """Return a JUnit XML document with one ``testcase`` per cell; failed cells carry their problems.

    Each case's ``system-out`` has the grid values and the job traces, with ``secrets`` masked.
    """
    failures = sum(not result.passed for result in results)
    root = ElementTree.Element("testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                               errors="0", time=f"{sum(result.seconds for result in results):.1f}")
    for result in results:
        cell = result.cell
        case = ElementTree.SubElement(root, "testcase", classname=f"{suite}.{cell.scenario}.{cell.mode}",
                                      name=f"engine {cell.engine.name} runner {cell.runner_version}",
                                      time=f"{result.seconds:.1f}")
        if not result.passed:
            message = mask("; ".join(result.problems), list(secrets))
            failure = ElementTree.SubElement(case, "failure", message=message[:500])
            failure.text = mask("\n".join(result.problems), list(secrets))
        output = [f"dind ready: {_ready(result)}", f"images on: {', '.join(result.image_daemons) or '-'}"]
        output += [f"--- trace of {name} ---\n{trace}" for name, trace in result.traces.items()]
        ElementTree.SubElement(case, "system-out").text = _xml_text(mask("\n".join(output), list(secrets)))
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(results: list[CellResult], path: Path, suite: str = "harness-matrix", secrets: list[str] = ()) -> None:
    """Write :func:`junit_xml` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(results, suite, secrets))
