"""The placement report: one self-contained HTML file per set of runs.

The file has no external assets and loads nothing from the network: styles are inline, the
diagrams are inline SVG, and it contains no script. It opens the same offline as online.
Per mode it shows the daemons with what appeared on them, the job containers with arrows to the
daemon each talked to, a timeline of each container's life, and the masked job traces.
"""

from __future__ import annotations

import logging
import re
import time
from html import escape
from pathlib import Path

from harness.report_diagram import container_events, links, render_diagram, render_timeline
from harness.variables import mask

log = logging.getLogger(__name__)

# CSI sequences (colours, erase line) and GitLab's collapsible section markers in traces.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SECTION = re.compile(r"section_(?:start|end):\d+:[A-Za-z0-9_.-]+(?:\[[^\]]*\])?\r?")

_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #202124; max-width: 1060px; }
h1 { font-size: 22px; } h2 { font-size: 19px; border-bottom: 2px solid #dadce0; padding-bottom: 4px; }
h3 { font-size: 15px; margin-top: 22px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #dadce0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f1f3f4; }
svg text { font-family: sans-serif; font-size: 13px; fill: #202124; }
svg text.box-title { font-weight: bold; font-size: 14px; }
svg text.small { font-size: 11px; }
svg tspan.kind { fill: #5f6368; font-style: italic; }
pre { background: #202124; color: #e8eaed; padding: 10px; overflow-x: auto; font-size: 12px; }
details { margin: 4px 0; } summary { cursor: pointer; }
.success { color: #188038; } .failed { color: #d93025; } .skipped { color: #5f6368; }
.note { color: #5f6368; font-size: 13px; }
"""


def clean_trace(trace: str, secrets: list[str]) -> str:
    """Return ``trace`` without ANSI codes and section markers, with every secret masked again."""
    text = _SECTION.sub("", trace)
    text = _ANSI.sub("", text)
    return mask(text, secrets)


def placement_properties(result) -> list[tuple[str, str]]:
    """Return JUnit XML properties naming, per daemon, what appeared on it in ``result``."""
    by_daemon: dict[str, list[str]] = {}
    for appearance in result.placement.appearances():
        by_daemon.setdefault(appearance.daemon, []).append(f"{appearance.kind} {appearance.name}")
    prefix = f"placement {result.scenario}/{result.mode}"
    properties = [(f"{prefix} {daemon}", "; ".join(items)) for daemon, items in by_daemon.items()]
    properties += [(f"{prefix} arrow", f"{link.container} -> {link.daemon}") for link in links(result)
                   if link.role == "build"]
    return properties or [(prefix, "nothing appeared")]


def render_report(results: list, title: str = "Placement report") -> str:
    """Render the runs in ``results`` (one RunResult per scenario and mode) as one HTML page."""
    created = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             f'<p class="note">Written {escape(created)} by dind-dood-harness. Boxes on the right are Docker '
             "daemons with what appeared on them during the run; boxes on the left are the job's containers, "
             "with an arrow to the daemon each sent its Docker API requests to.</p>"]
    parts += [_mode_section(result) for result in results]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: list, path: str | Path, title: str = "Placement report") -> Path:
    """Write the HTML report of ``results`` to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(results, title), encoding="utf-8")
    log.info("wrote the placement report to %s", path)
    return path


def _mode_section(result) -> str:
    anchor = f"{result.scenario}-{result.mode}"
    parts = [f'<section class="mode" id="{escape(anchor)}" data-mode="{escape(result.mode)}" '
             f'data-scenario="{escape(result.scenario)}" data-host="{escape(result.host)}">',
             f"<h2>{escape(result.scenario)} in {escape(result.mode)} mode</h2>",
             f'<p class="host">Host engine: <code>{escape(result.host)}</code></p>',
             _jobs_table(result),
             "<h3>Where things ended up</h3>", render_diagram(result),
             _placement_table(result)]
    if result.registry_tags:
        tags = ", ".join(f"{repo}:{tag}" for repo, tags in result.registry_tags.items() for tag in tags)
        parts.append(f'<p>The registry contains: <code>{escape(tags)}</code></p>')
    parts += ["<h3>Container timeline</h3>",
              '<p class="note">Moments are derived from the executor\'s stage durations, counted from the '
              "first job's start: green created, yellow service ready, blue script steps, red removed.</p>",
              render_timeline(result), _events_table(result),
              "<h3>Job traces</h3>", _traces(result), "</section>"]
    return "\n".join(parts)


def _jobs_table(result) -> str:
    rows = ["<table class=\"jobs\"><tr><th>stage</th><th>job</th><th>status</th><th>exit code</th>"
            "<th>duration</th><th>DOCKER_HOST</th></tr>"]
    for job in result.jobs:
        code = "" if job.exit_code is None else str(job.exit_code)
        rows.append(f'<tr data-job="{escape(job.name)}"><td>{escape(job.stage)}</td><td>{escape(job.name)}</td>'
                    f'<td class="{escape(job.status)}">{escape(job.status)}</td><td>{escape(code)}</td>'
                    f"<td>{job.duration:.1f} s</td><td><code>{escape(job.docker_host or '-')}</code></td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _placement_table(result) -> str:
    rows = ['<table class="placement"><tr><th>daemon</th><th>kind</th><th>name</th><th>state</th></tr>']
    for appearance in result.placement.appearances():
        rows.append(f'<tr data-daemon="{escape(appearance.daemon)}" data-kind="{escape(appearance.kind)}">'
                    f"<td>{escape(appearance.daemon)}</td><td>{escape(appearance.kind)}</td>"
                    f"<td>{escape(appearance.name)}</td><td>{escape(appearance.state)}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _events_table(result) -> str:
    events = container_events(result)
    if not events:
        return ""
    rows = ['<details><summary>Timeline as a table</summary><table class="events">'
            "<tr><th>at</th><th>job</th><th>container</th><th>event</th></tr>"]
    for event in sorted(events, key=lambda e: e.at):
        rows.append(f'<tr data-event="{escape(event.name)}"><td>+{event.at:.1f} s</td><td>{escape(event.job)}</td>'
                    f"<td>{escape(event.container)}</td><td>{escape(event.name)}</td></tr>")
    rows.append("</table></details>")
    return "\n".join(rows)


def _traces(result) -> str:
    parts = []
    for job in result.jobs:
        if not job.trace:
            continue
        text = clean_trace(job.trace, result.secrets)
        parts.append(f'<details class="trace" data-job="{escape(job.name)}"><summary>{escape(job.name)} '
                     f'({escape(job.status)})</summary><pre>{escape(text)}</pre></details>')
    return "\n".join(parts) or '<p class="note">No job produced a trace.</p>'
