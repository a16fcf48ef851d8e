"""Find or provision the Docker engine the harness drives.

An engine that already responds to ``/_ping`` (``DOCKER_HOST`` or the default socket) is used as it is.
Otherwise, as root on Debian, the harness installs Debian's ``docker.io`` and starts ``dockerd``
with its log, pid file and ``daemon.json`` under ``<state dir>/engine``. When a privileged probe
container fails because the kernel's capability bounding set is incomplete, the runtime wrapper
``runc-capfilter`` becomes dockerd's default runtime and the engine is restarted.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import docker
import docker.errors

from harness import labels
from harness.errors import EngineError, ReadinessTimeout

log = logging.getLogger(__name__)

DEBIAN_PACKAGES = ["docker.io", "containerd", "runc", "iptables", "jq", "debootstrap", "busybox-static",
                   "iproute2", "git"]
WRAPPER_NAME = "harness-runc"
WRAPPER_PATH = Path("/usr/local/lib/dind-dood-harness/runc-capfilter")
PROBE_IMAGE = "dind-dood-harness/probe:busybox"
CAPS_ERROR = "unable to apply caps"
API_TIMEOUT_SECONDS = 300
HOSTS_FILE = Path("/etc/hosts")
HUB_BLOCK = "# dind-dood-harness: no Docker Hub"
# Names dockerd contacts to pull from Docker Hub; mapped to loopback so that a pull fails here.
DOCKER_HUB_NAMES = ("registry-1.docker.io", "index.docker.io", "auth.docker.io",
                    "production.cloudflare.docker.com", "docker.io")

# Capability names by bit number, from linux/capability.h.
CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]


def state_dir() -> Path:
    """Return the harness state directory (``HARNESS_STATE_DIR``, default ``/var/lib/dind-dood-harness``)."""
    return Path(os.environ.get("HARNESS_STATE_DIR", "/var/lib/dind-dood-harness"))


def engine_dir() -> Path:
    """Return the directory holding the harness-started dockerd's log, pid file and daemon.json."""
    return state_dir() / "engine"


def missing_capabilities(status_path: str = "/proc/self/status") -> list[str]:
    """Return the capabilities (``CAP_*``) missing from this process's bounding set."""
    bounding = 0
    for line in Path(status_path).read_text().splitlines():
        if line.startswith("CapBnd:"):
            bounding = int(line.split()[1], 16)

    return [f"CAP_{name}" for bit, name in enumerate(CAPABILITIES) if not bounding >> bit & 1]


def connect(timeout: float = 5) -> docker.DockerClient | None:
    """Return a client for the engine at ``DOCKER_HOST`` or the default socket, or None if none responds."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, OSError) as error:
        log.debug("no engine responds: %s", error)
        return None

    # The short timeout only decides whether an engine is there; a busy engine (image pushes,
    # several sessions at once) can take far longer than that to return a listing.
    client.api.timeout = API_TIMEOUT_SECONDS
    return client


def require_engine() -> docker.DockerClient:
    """Return a client for a running engine, or raise EngineError with the command that starts one."""
    client = connect()
    if client is None and os.environ.get("DOCKER_HOST"):
        # `harness engine up` starts the default socket's engine, which would not help here.
        raise EngineError(f"no Docker engine responds at DOCKER_HOST={os.environ['DOCKER_HOST']}",
                          "point DOCKER_HOST at a running engine, or unset it to use the harness's "
                          "engine (`harness engine up`)")
    if client is None:
        raise EngineError("no Docker engine responds at unix:///var/run/docker.sock",
                          "start one with `harness engine up` (or `make engine`)")
    return client


@dataclass
class ProbeResult:
    """Outcome of running a ``--privileged`` container on the engine."""

    ok: bool
    reason: str = ""


@dataclass
class EngineStatus:
    """The engine facts that ``harness engine status`` and ``harness doctor`` report."""

    running: bool
    started_by_harness: bool
    host: str
    version: str = ""
    api_version: str = ""
    storage_driver: str = ""
    cgroup_version: str = ""
    default_runtime: str = ""
    privileged: ProbeResult | None = None
    missing_capabilities: list[str] = field(default_factory=list)


def _dockerd_pid() -> int | None:
    """Return the pid of the dockerd this harness started, if it still runs."""
    pid_file = engine_dir() / "dockerd.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def install_engine_packages() -> None:
    """Install Debian's docker.io and the tools the forge needs, unless dockerd is already there."""
    if all(shutil.which(tool) for tool in ("dockerd", "jq", "debootstrap", "ip")) and Path("/bin/busybox").exists():
        return

    if os.geteuid() != 0 or not Path("/etc/debian_version").exists():
        raise EngineError(
            "dockerd is not installed and the harness can install it only as root on Debian",
            f"install {' '.join(DEBIAN_PACKAGES)} yourself, or start an engine and set DOCKER_HOST",
        )

    log.info("installing %s from Debian's packages", " ".join(DEBIAN_PACKAGES))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES]):
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            tail = "\n".join(completed.stderr.splitlines()[-5:])
            raise EngineError(f"`{' '.join(command)}` failed: {tail}", "check the Debian mirror and retry")


def install_runtime_wrapper() -> Path:
    """Copy the runc-capfilter wrapper to its fixed path, where daemon.json points."""
    source = resources.files("harness").joinpath("data/runc-capfilter").read_bytes()
    if not WRAPPER_PATH.exists() or WRAPPER_PATH.read_bytes() != source:
        WRAPPER_PATH.parent.mkdir(parents=True, exist_ok=True)
        WRAPPER_PATH.write_bytes(source)
        WRAPPER_PATH.chmod(0o755)
        log.info("installed the runtime wrapper at %s", WRAPPER_PATH)
    return WRAPPER_PATH


def offline_guard_enabled() -> bool:
    """Return whether the harness-started engine is kept from contacting any registry off this machine.

    On by default, because these machines reach no container registry and traffic to outside
    addresses must never be attempted. ``HARNESS_ALLOW_PULLS=1`` turns it off for machines that
    may pull real images.
    """
    return os.environ.get("HARNESS_ALLOW_PULLS", "") not in ("1", "true", "yes")


def local_dns_address() -> str | None:
    """Return this machine's first global IPv4 address, used as a DNS server that answers nothing.

    Containers get it as their only name server. Nothing listens on its port 53, so a lookup of
    an outside name (``registry-1.docker.io`` from an image pull inside dind) fails at once on
    this machine instead of reaching the outside. Names in ``/etc/hosts`` (``extra_hosts``) and
    container names on user-defined networks still resolve.
    """
    completed = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                               capture_output=True, text=True)
    for line in completed.stdout.splitlines():
        fields = line.split()
        if len(fields) > 3 and not fields[1].startswith(("docker", "br-", "veth")):
            return fields[3].split("/")[0]
    return None


def install_hub_block(hosts_file: Path = HOSTS_FILE) -> None:
    """Map Docker Hub's names to 127.0.0.1 in a marked /etc/hosts line, so host-engine pulls fail here."""
    text = hosts_file.read_text()
    if HUB_BLOCK in text:
        return
    line = f"127.0.0.1 {' '.join(DOCKER_HUB_NAMES)} {HUB_BLOCK}\n"
    hosts_file.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line)
    log.info("mapped Docker Hub's names to 127.0.0.1 in %s (HARNESS_ALLOW_PULLS=1 turns this off)", hosts_file)


def remove_hub_block(hosts_file: Path = HOSTS_FILE) -> None:
    """Remove the marked Docker Hub line from /etc/hosts, if present."""
    text = hosts_file.read_text()
    if HUB_BLOCK in text:
        hosts_file.write_text("".join(line for line in text.splitlines(keepends=True) if HUB_BLOCK not in line))


def _write_daemon_config(with_wrapper: bool) -> Path:
    """Write the daemon.json of the harness-started dockerd and return its path."""
    config: dict[str, object] = {"storage-driver": "overlay2"}
    dns = local_dns_address() if offline_guard_enabled() else None
    if dns:
        config["dns"] = [dns]
    if with_wrapper:
        config["runtimes"] = {WRAPPER_NAME: {"path": str(install_runtime_wrapper())}}
        config["default-runtime"] = WRAPPER_NAME

    path = engine_dir() / "daemon.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def start_dockerd(with_wrapper: bool, timeout: float = 60) -> docker.DockerClient:
    """Start dockerd in the background, detached from this process, and wait until it responds.

    Raises:
        ReadinessTimeout: dockerd did not respond to ``/_ping`` in time, and the message carries its log tail.
    """
    engine_dir().mkdir(parents=True, exist_ok=True)
    config = _write_daemon_config(with_wrapper)
    log_path = engine_dir() / "dockerd.log"
    command = ["dockerd", "--config-file", str(config), "--pidfile", str(engine_dir() / "dockerd.pid")]

    started = time.monotonic()
    with log_path.open("ab") as log_file:
        subprocess.Popen(command, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL,
                         start_new_session=True)

    while time.monotonic() - started < timeout:
        client = connect(timeout=2)
        if client is not None:
            log.info("dockerd ready after %.1f s (log: %s, wrapper: %s)",
                     time.monotonic() - started, log_path, "on" if with_wrapper else "off")
            return client
        time.sleep(0.2)

    raise ReadinessTimeout("dockerd", timeout, _tail(log_path))


def stop_dockerd(timeout: float = 30) -> bool:
    """Stop the dockerd this harness started (SIGTERM, then wait). Return False if none ran."""
    pid = _dockerd_pid()
    if pid is None:
        return False

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _dockerd_pid() is None:
            log.info("dockerd (pid %d) stopped", pid)
            return True
        time.sleep(0.2)

    raise EngineError(f"dockerd (pid {pid}) did not stop within {timeout:.0f} s",
                      f"kill it by hand: kill -9 {pid}")


def down() -> bool:
    """Stop the harness-started dockerd and remove the Docker Hub line from /etc/hosts.

    Returns False when no harness-started dockerd was running.
    """
    stopped = stop_dockerd()
    remove_hub_block()
    return stopped


def _ensure_probe_image(client: docker.DockerClient) -> str:
    """Import a one-binary busybox image for probes, independent of the image forge."""
    try:
        client.images.get(PROBE_IMAGE)
        return PROBE_IMAGE
    except docker.errors.ImageNotFound:
        pass

    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise EngineError("/bin/busybox is missing, so no probe image can be made",
                          "apt-get install busybox-static")

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:
        archive.add(str(busybox), arcname="bin/busybox")
        link = tarfile.TarInfo("bin/sh")
        link.type = tarfile.SYMTYPE
        link.linkname = "busybox"
        archive.addfile(link)
    repository, tag = PROBE_IMAGE.split(":")
    changes = [f"LABEL {key}={value}" for key, value in labels.managed_labels("probe").items()
               if key in (labels.MANAGED, labels.TYPE)]
    client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag, changes=changes)
    return PROBE_IMAGE


def probe_privileged(client: docker.DockerClient) -> ProbeResult:
    """Run ``docker run --rm --privileged <probe> true`` and report whether it worked."""
    image = _ensure_probe_image(client)
    try:
        client.containers.run(image, ["/bin/busybox", "true"], privileged=True, remove=True,
                              labels=labels.managed_labels("probe"))
    except docker.errors.APIError as error:
        return ProbeResult(False, str(error.explanation or error))
    except docker.errors.ContainerError as error:
        return ProbeResult(False, f"exit status {error.exit_status}")
    return ProbeResult(True)


def up() -> docker.DockerClient:
    """Return a client for a working engine, installing and starting dockerd when none responds.

    A harness-started engine whose privileged probe fails on the bounding-set error is restarted
    with the runtime wrapper as default runtime and probed again.
    """
    client = connect()
    if client is None:
        install_engine_packages()
        # Before dockerd starts, because its resolver reads /etc/hosts again only every few seconds.
        if offline_guard_enabled():
            install_hub_block()
        client = start_dockerd(with_wrapper=False)

    probe = probe_privileged(client)
    if probe.ok:
        return _guarded(client)

    if CAPS_ERROR not in probe.reason:
        raise EngineError(f"a --privileged container fails: {probe.reason}",
                          "check the engine's log; the harness needs privileged containers for DinD")
    if _dockerd_pid() is None:
        raise EngineError(
            f"--privileged fails on this engine ({CAPS_ERROR}) and it was not started by the harness",
            f"register {WRAPPER_PATH} as the engine's default runtime, or stop it and run `harness engine up`",
        )

    log.info("privileged containers fail (%s missing from the bounding set); restarting dockerd "
             "with the runtime wrapper", ", ".join(missing_capabilities()))
    stop_dockerd()
    client = start_dockerd(with_wrapper=True)
    probe = probe_privileged(client)
    if not probe.ok:
        raise EngineError(f"--privileged still fails with the runtime wrapper: {probe.reason}",
                          f"see {engine_dir() / 'dockerd.log'}")
    return _guarded(client)


def _guarded(client: docker.DockerClient) -> docker.DockerClient:
    """Install the Docker Hub block for a harness-started engine when the offline guard is on."""
    if _dockerd_pid() is not None and offline_guard_enabled():
        install_hub_block()
    return client


def status(probe: bool = True) -> EngineStatus:
    """Describe the engine: version, storage driver, cgroup version, runtime, privileged probe."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    client = connect()
    result = EngineStatus(running=client is not None, started_by_harness=_dockerd_pid() is not None,
                          host=host, missing_capabilities=missing_capabilities())
    if client is None:
        return result

    version = client.version()
    info = client.info()
    result.version = version.get("Version", "")
    result.api_version = version.get("ApiVersion", "")
    result.storage_driver = info.get("Driver", "")
    result.cgroup_version = str(info.get("CgroupVersion", ""))
    result.default_runtime = info.get("DefaultRuntime", "")
    if probe:
        result.privileged = probe_privileged(client)
    return result


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
