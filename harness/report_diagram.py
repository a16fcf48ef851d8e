"""SVG pieces of the placement report: the daemon diagram and the container timeline.

Every element the browser test looks for carries data attributes: ``data-daemon`` on a daemon box,
``data-container`` and ``data-role`` on a job's container, ``data-from``/``data-to`` on an arrow,
``data-event`` on a timeline mark. Every text goes through :func:`html.escape`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from harness.placement import HOST

BOX_X, BOX_WIDTH = 360, 620
NODE_X, NODE_WIDTH = 20, 280
LINE = 17
HEADER = 30
GAP = 18


@dataclass
class Link:
    """A container of a job and the daemon it sent Docker API requests to."""

    container: str
    job: str
    role: str
    daemon: str
    via: str


@dataclass
class Box:
    """One daemon's box: its name and the lines listing what appeared on it."""

    daemon: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    y: int = 0

    @property
    def height(self) -> int:
        return HEADER + LINE * max(len(self.lines), 1) + 8


def shorten(text: str, width: int) -> str:
    """Return ``text`` cut in the middle to ``width`` characters; the full text stays in the tables."""
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return f"{text[:half]}…{text[-(width - 1 - half):]}"


def daemon_of(result, job) -> tuple[str, str]:
    """Return the daemon a job's build container talked to and how, or ("", "") when unknown.

    A ``tcp://`` ``DOCKER_HOST`` together with a dind service means the service's daemon; a
    mounted ``docker.sock`` in the runner's volumes means the host engine.
    """
    dind = [d for d in result.placement.daemons if d == f"dind:{job.name}" or d.startswith(f"dind:{job.name}:")]
    services = job.details.get("services", [])
    if dind and (job.docker_host.startswith("tcp://") or services):
        return dind[0], job.docker_host or "service alias"
    socket = [v for v in result.runner_volumes if "docker.sock" in v.split(":")[0]]
    if socket and not job.docker_host.startswith("tcp://"):
        return HOST, socket[0].split(":")[0]
    return "", ""


def links(result) -> list[Link]:
    """Return every job container with the daemon it talked to (services run their own daemon)."""
    found: list[Link] = []
    for job in result.jobs:
        target, via = daemon_of(result, job)
        for container in job.details.get("containers", []):
            if container.get("type") == "build" and target:
                found.append(Link(container["name"], job.name, "build", target, via))
        for service in job.details.get("services", []):
            daemon = f"dind:{job.name}"
            if daemon in result.placement.daemons:
                found.append(Link(service.get("container_name", ""), job.name, "service", daemon, "runs the daemon"))
    return found


def boxes(result) -> list[Box]:
    """Return one box per daemon (host first) listing the images, containers and volumes that appeared."""
    by_daemon = {daemon: Box(daemon) for daemon in result.placement.daemons
                 if daemon == HOST or daemon.startswith("dind:")}
    for appearance in result.placement.appearances():
        state = f" ({appearance.state})" if appearance.state else ""
        box = by_daemon.get(appearance.daemon)
        if box is not None:
            box.lines.append((appearance.kind, appearance.name + state))
        elif appearance.kind == "path" and appearance.daemon.startswith("service:"):
            # A dind daemon resolves bind mounts in its own service container's filesystem.
            box = by_daemon.get("dind:" + appearance.daemon.split(":", 1)[1])
            if box is not None:
                box.lines.append(("path in service", appearance.name + state))
    y = 20
    for box in by_daemon.values():
        box.y = y
        y += box.height + GAP
    return list(by_daemon.values())


def render_diagram(result) -> str:
    """Render the daemons, the job containers and the arrows between them as one SVG."""
    daemon_boxes = boxes(result)
    nodes = links(result)
    node_y = {link.container: 20 + index * (LINE * 2 + GAP) for index, link in enumerate(nodes)}
    height = max([b.y + b.height for b in daemon_boxes] + [y + LINE * 2 for y in node_y.values()]) + 20
    parts = [f'<svg class="diagram" xmlns="http://www.w3.org/2000/svg" width="1000" height="{height}" '
             f'viewBox="0 0 1000 {height}" role="img" data-mode="{escape(result.mode)}">',
             '<defs><marker id="head-' + escape(result.mode) + '" viewBox="0 0 10 10" refX="10" refY="5" '
             'markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>']
    parts += [_box_svg(box) for box in daemon_boxes]
    parts += [_node_svg(link, node_y[link.container]) for link in nodes]
    centres = {box.daemon: box.y + HEADER // 2 for box in daemon_boxes}
    parts += [_arrow_svg(link, node_y[link.container], centres.get(link.daemon), result.mode) for link in nodes]
    parts.append("</svg>")
    return "\n".join(parts)


def _box_svg(box: Box) -> str:
    colour = "#e8f0fe" if box.daemon == HOST else "#fef3e0"
    title = "host engine" if box.daemon == HOST else f"{box.daemon} daemon"
    rows = [f'<g class="daemon" data-daemon="{escape(box.daemon)}">',
            f'<rect x="{BOX_X}" y="{box.y}" width="{BOX_WIDTH}" height="{box.height}" rx="6" '
            f'fill="{colour}" stroke="#555"/>',
            f'<text class="box-title" x="{BOX_X + 10}" y="{box.y + 20}">{escape(title)}</text>']
    for index, (kind, text) in enumerate(box.lines or [("", "nothing appeared")]):
        y = box.y + HEADER + LINE * index + 10
        rows.append(f'<text class="item" data-kind="{escape(kind)}" x="{BOX_X + 16}" y="{y}">'
                    f'<tspan class="kind">{escape(kind)}</tspan> {escape(shorten(text, 78))}</text>')
    rows.append("</g>")
    return "\n".join(rows)


def _node_svg(link: Link, y: int) -> str:
    colour = "#e6f4ea" if link.role == "build" else "#f3e8fd"
    return (f'<g class="job-container" data-container="{escape(link.container)}" data-job="{escape(link.job)}" '
            f'data-role="{escape(link.role)}"><rect x="{NODE_X}" y="{y}" width="{NODE_WIDTH}" height="{LINE * 2}" '
            f'rx="4" fill="{colour}" stroke="#555"/><text x="{NODE_X + 8}" y="{y + 14}">'
            f'{escape(link.job)} · {escape(link.role)}</text><text class="small" x="{NODE_X + 8}" y="{y + 29}">'
            f'{escape(shorten(link.container, 44))}</text></g>')


def _arrow_svg(link: Link, y: int, target_y: int | None, mode: str) -> str:
    if target_y is None:
        return ""
    dash = ' stroke-dasharray="5,4"' if link.role == "service" else ""
    return (f'<g class="arrow" data-from="{escape(link.container)}" data-to="{escape(link.daemon)}" '
            f'data-role="{escape(link.role)}" data-via="{escape(link.via)}">'
            f'<line x1="{NODE_X + NODE_WIDTH}" y1="{y + LINE}" x2="{BOX_X}" y2="{target_y}" stroke="#444" '
            f'stroke-width="1.5"{dash} marker-end="url(#head-{escape(mode)})"/>'
            f'<title>{escape(link.container)} → {escape(link.daemon)} via {escape(link.via)}</title></g>')


@dataclass
class Event:
    """One moment in a container's life, in seconds since the run's first job started."""

    container: str
    job: str
    name: str
    at: float


def container_events(result) -> list[Event]:
    """Derive each job container's created, ready, step and removed moments from the stage timings.

    The executor records how long each stage took, in order, and the harness records when the
    job started, so a stage's start is the job start plus the durations before it.
    NOTE: a container's creation is placed at the start of the stage that first needs it; the
    executor does not record the exact instant of each create call.
    """
    starts = [job.started_at for job in result.jobs if job.started_at]
    origin = min(starts) if starts else 0.0
    events: list[Event] = []
    for job in result.jobs:
        if not job.started_at:
            continue
        stage_start, clock = {}, job.started_at - origin
        for stage, seconds in job.details.get("timings", {}).items():
            stage_start[stage] = (clock, clock + seconds)
            clock += seconds
        events += _events_of_job(job, stage_start, clock)
    return events


def _events_of_job(job, stage_start: dict, end: float) -> list[Event]:
    events: list[Event] = []
    prepare = stage_start.get("prepare_executor", (0.0, 0.0))
    steps = [(name, span) for name, span in stage_start.items() if name.startswith("step_")]
    for container in job.details.get("containers", []):
        name, kind = container.get("name", ""), container.get("type", "")
        if kind == "service":
            events += [Event(name, job.name, "created", prepare[0]), Event(name, job.name, "service ready", prepare[1])]
        elif kind == "predefined":
            events.append(Event(name, job.name, "created", stage_start.get("prepare_script", prepare)[0]))
        elif kind == "build" and steps:
            events.append(Event(name, job.name, "created", steps[0][1][0]))
            events += [Event(name, job.name, step, span[0]) for step, span in steps]
        events.append(Event(name, job.name, "removed", end))
    return events


def render_timeline(result) -> str:
    """Render one bar per job container from creation to removal, with a mark per event."""
    events = container_events(result)
    if not events:
        return '<p class="note">No timings were recorded for this run.</p>'
    names = list(dict.fromkeys(event.container for event in events))
    span = max(event.at for event in events) or 1.0
    scale = 640 / span
    height = 30 + 26 * len(names)
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="1000" height="{height}" '
             f'viewBox="0 0 1000 {height}">']
    for row, name in enumerate(names):
        mine = [event for event in events if event.container == name]
        y = 20 + 26 * row
        first, last = min(e.at for e in mine), max(e.at for e in mine)
        parts.append(f'<g class="lifeline" data-container="{escape(name)}">'
                     f'<text class="small" x="10" y="{y + 12}">{escape(mine[0].job)} · {escape(shorten(name, 40))}</text>'
                     f'<rect x="{340 + first * scale:.1f}" y="{y + 2}" width="{max((last - first) * scale, 2):.1f}" '
                     f'height="12" fill="#c6dafc"/>')
        parts += [f'<circle data-event="{escape(e.name)}" cx="{340 + e.at * scale:.1f}" cy="{y + 8}" r="4" '
                  f'fill="{_EVENT_COLOURS.get(e.name, "#1a73e8")}"><title>{escape(e.name)} at +{e.at:.1f} s'
                  f'</title></circle>' for e in mine]
        parts.append("</g>")
    parts.append(f'<text class="small" x="340" y="{height - 4}">0 s</text>'
                 f'<text class="small" x="940" y="{height - 4}">{span:.0f} s</text></svg>')
    return "\n".join(parts)


_EVENT_COLOURS = {"created": "#188038", "service ready": "#f9ab00", "removed": "#d93025"}
