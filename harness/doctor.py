"""``harness doctor``: check everything the harness needs and print the exact fix for what is missing."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from harness import engine

log = logging.getLogger(__name__)


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks() -> list[Check]:
    """Run every check; checks that need a running engine are skipped when there is none."""
    status = engine.status(probe=True)
    checks = [_engine_check(status)]
    if not status.running:
        return checks

    checks.append(Check("storage driver", status.storage_driver == "overlay2", status.storage_driver,
                        "use overlay2: nested daemons on vfs are slow; see the engine's daemon.json"))
    checks.append(Check("cgroup", True, f"v{status.cgroup_version}"))
    checks.append(_privileged_check(status))
    checks.append(_offline_check(status))
    checks.extend(_image_checks())
    checks.append(_registry_check())
    return checks


def _engine_check(status: engine.EngineStatus) -> Check:
    if not status.running:
        return Check("engine", False, f"no engine responds at {status.host}",
                     "run `harness engine up` (installs Debian's docker.io and starts dockerd as root)")
    origin = "started by the harness" if status.started_by_harness else "not started by the harness"
    return Check("engine", True,
                 f"Docker {status.version}, API {status.api_version}, {origin}, runtime {status.default_runtime}")


def _privileged_check(status: engine.EngineStatus) -> Check:
    probe = status.privileged
    missing = ", ".join(status.missing_capabilities) or "none"
    if probe is not None and probe.ok:
        return Check("privileged", True, f"works (bounding set lacks: {missing})")
    reason = probe.reason if probe else "not probed"
    return Check("privileged", False, reason,
                 "run `harness engine up`, which registers the runc-capfilter runtime wrapper")


def _offline_check(status: engine.EngineStatus) -> Check:
    if not status.started_by_harness:
        return Check("offline guard", True, "not applied: the engine was not started by the harness")
    if not engine.offline_guard_enabled():
        return Check("offline guard", True, "off (HARNESS_ALLOW_PULLS is set): pulls may leave this machine")
    return Check("offline guard", True,
                 "on: containers get a DNS server that answers nothing, Docker Hub maps to 127.0.0.1")


def _image_checks() -> list[Check]:
    from harness import images

    client = engine.require_engine()
    checks = []
    for row in images.list_images(client):
        if not row.present and row.on_demand:
            checks.append(Check(f"image {row.tag}", True, f"built on demand (`harness images build {row.recipe}`)"))
        elif not row.present:
            checks.append(Check(f"image {row.tag}", False, "missing", "run `harness images build`"))
        elif row.recipe_changed:
            checks.append(Check(f"image {row.tag}", False, "recipe changed since the build",
                                "run `harness images build`"))
        else:
            kind = "stand-in" if row.stand_in else "upstream image"
            checks.append(Check(f"image {row.tag}", True, kind))
    return checks


def _registry_check() -> Check:
    from harness import images

    client = engine.require_engine()
    present = any(row.present for row in images.list_images(client) if row.tag == "registry:2")
    # The harness sends no traffic off this machine, so upstream registries are never probed here.
    detail = "local registry image present" if present else "registry:2 stand-in missing"
    detail += "; upstream registries not probed (use `harness images build --pull` to pull real images)"
    return Check("registry", present, detail, "" if present else "run `harness images build`")


def render(checks: list[Check]) -> str:
    """Format the checks as aligned lines, each failing one followed by its fix."""
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        lines.append(f"{mark} {check.name.ljust(width)}  {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"     {' ' * width}  fix: {check.fix}")
    return "\n".join(lines)
