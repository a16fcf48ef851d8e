"""The local registry and the pull mirror: TLS, auth, wiring into dind, host trust for DooD."""

from __future__ import annotations

import base64
import contextlib
import http.client
import secrets
import ssl
import time
from pathlib import Path

import docker
import docker.errors
import pytest
from cryptography import x509

from harness import labels, locks, registry_trust
from harness.errors import RegistryError
from harness.placement import HOST, Snapshot
from harness.registry import Mirror, Registry, hub_repository, session_dir, validate_hostname
from harness.registry_trust import (
    HOST_CERTS_DIR,
    HOSTS_FILE,
    MARKER_FILE,
    CertificateAuthority,
    HostTrust,
    Wiring,
    add_hosts_block,
    remove_hosts_blocks,
)
from harness.run import remove_host_leftovers
from scratch_images import build_scratch_image

SEED_HOST = "registry.cn-beijing.aliyuncs.com"
DIND_IMAGE = "docker:19.03.7-dind"
BUSYBOX_IMAGE = "busybox:latest"


# Units: certificates, hosts blocks, wiring, references.


def test_ca_issues_cert_for_names_and_ips(tmp_path):
    authority = CertificateAuthority(tmp_path)

    cert_pem, key_pem = authority.issue([SEED_HOST, "harness-mirror"], ["172.17.0.9"])

    certificate = x509.load_pem_x509_certificate(cert_pem)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [SEED_HOST, "harness-mirror"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["172.17.0.9"]
    ca_certificate = x509.load_pem_x509_certificate(authority.cert_path.read_bytes())
    certificate.verify_directly_issued_by(ca_certificate)
    assert b"PRIVATE KEY" in key_pem


def test_ca_reused_across_instances(tmp_path):
    first = CertificateAuthority(tmp_path).cert_pem

    second = CertificateAuthority(tmp_path).cert_pem

    assert first == second
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0


def test_hosts_block_added_and_removed():
    original = "127.0.0.1 localhost\n"

    with_block = add_hosts_block(original, "s1 reg", {SEED_HOST: "172.17.0.5"})
    both = add_hosts_block(with_block, "s2 reg", {"other.example": "172.17.0.6"})

    assert f"172.17.0.5\t{SEED_HOST}\n" in with_block
    assert with_block.startswith(original)
    assert remove_hosts_blocks(both, "s1 ") == add_hosts_block(original, "s2 reg", {"other.example": "172.17.0.6"})
    assert remove_hosts_blocks(remove_hosts_blocks(both, "s1 "), "s2 ") == original


def test_hosts_block_appended_to_unterminated_file():
    text = add_hosts_block("127.0.0.1 localhost", "s1 reg", {"a.example": "172.17.0.5"})

    assert text.splitlines()[0] == "127.0.0.1 localhost"
    assert remove_hosts_blocks(text, "s1 ") == "127.0.0.1 localhost\n"


def test_wiring_sum_drops_duplicates():
    certs = "/state/certs.d:/etc/docker/certs.d:ro"
    first = Wiring((f"{SEED_HOST}:172.17.0.5",), (certs,))
    second = Wiring(("harness-mirror:172.17.0.6",), (certs, "/state/d.json:/etc/docker/daemon.json:ro"))

    combined = first + second

    assert combined.extra_hosts == (f"{SEED_HOST}:172.17.0.5", "harness-mirror:172.17.0.6")
    assert combined.volumes == (certs, "/state/d.json:/etc/docker/daemon.json:ro")


def test_wiring_sum_rejects_conflicts():
    with pytest.raises(RegistryError, match="hostname"):
        Wiring(("a.example:172.17.0.5",)) + Wiring(("a.example:172.17.0.6",))
    with pytest.raises(RegistryError, match="container path"):
        Wiring((), ("/x:/etc/docker/certs.d:ro",)) + Wiring((), ("/y:/etc/docker/certs.d:ro",))


@pytest.mark.parametrize(("reference", "expected"), [
    ("busybox", ("library/busybox", "latest")),
    ("node:18", ("library/node", "18")),
    ("docker:19.03.7-dind", ("library/docker", "19.03.7-dind")),
    ("gitlab/gitlab-runner:v16", ("gitlab/gitlab-runner", "v16")),
    ("docker.io/library/node:18", ("library/node", "18")),
    ("index.docker.io/alpine:3", ("library/alpine", "3")),
])
def test_hub_repository_maps_names(reference, expected):
    assert hub_repository(reference) == expected


@pytest.mark.parametrize("reference", ["quay.io/x/y:1", "localhost:5000/x", "busybox@sha256:" + "0" * 64])
def test_hub_repository_rejects_other_registries(reference):
    with pytest.raises(RegistryError):
        hub_repository(reference)


@pytest.mark.parametrize("name", ["registry.example.com:5000", "localhost", "10.0.0.1", "bad_name.example", ""])
def test_validate_hostname_rejects(name):
    with pytest.raises(RegistryError):
        validate_hostname(name)


def test_validate_hostname_lowercases():
    assert validate_hostname("Registry.CN-Beijing.Aliyuncs.com") == SEED_HOST


def test_host_trust_rejects_foreign_trust_dir(tmp_path):
    (tmp_path / "certs.d" / SEED_HOST).mkdir(parents=True)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    trust = HostTrust("172.17.0.5", b"ca", [SEED_HOST], "reg", certs_root=tmp_path / "certs.d", hosts_file=hosts)

    with pytest.raises(RegistryError, match="not made by the harness"):
        trust.install()

    assert hosts.read_text() == "127.0.0.1 localhost\n"
    assert list((tmp_path / "certs.d" / SEED_HOST).iterdir()) == []


def test_host_trust_undone_when_name_does_not_resolve(tmp_path):
    # The block goes to a scratch file, so the system lookup of the .invalid name finds nothing.
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    certs = tmp_path / "etc" / "certs.d"
    trust = HostTrust("172.17.0.5", b"ca", ["unmapped.harness.invalid", "172.17.0.5"], "reg",
                      certs_root=certs, hosts_file=hosts)

    with pytest.raises(RegistryError, match="resolves to nothing"):
        trust.install()

    assert hosts.read_text() == "127.0.0.1 localhost\n"
    assert not (tmp_path / "etc").exists()


def _trust_in(tmp_path, names: list[str]) -> HostTrust:
    """Return a host trust for 172.17.0.5 that writes to scratch files and resolves from them."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")

    def resolve(name: str, files_only: bool) -> set[str]:
        return {"172.17.0.5"} if f"172.17.0.5\t{name}" in hosts.read_text() else set()

    return HostTrust("172.17.0.5", b"ca", names, "reg", certs_root=tmp_path / "certs.d", hosts_file=hosts,
                     resolve=resolve)


def test_daemon_cache_wait_after_hosts_write(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_trust, "DAEMON_HOSTS_CACHE_SECONDS", 0.5)
    trust = _trust_in(tmp_path, ["cached.harness.invalid"])
    trust.install()
    written = time.monotonic()

    waited = trust.wait_for_daemon_cache()

    # Catches a wait that ends before a copy of the file read just before the write expires.
    assert time.monotonic() - written >= 0.45
    assert 0 < waited <= 0.5
    assert trust.wait_for_daemon_cache() == 0.0
    trust.remove()


def test_daemon_cache_no_wait_without_names(tmp_path, monkeypatch):
    monkeypatch.setattr(registry_trust, "DAEMON_HOSTS_CACHE_SECONDS", 30.0)
    trust = _trust_in(tmp_path, ["172.17.0.5"])
    trust.install()

    # An IP address gets a certs.d entry only, so the hosts file is unchanged and nothing waits.
    assert trust.wait_for_daemon_cache() == 0.0
    trust.remove()


# Engine tests: real registry containers, a real dind daemon, the host engine.


def _registry_resources(client: docker.DockerClient, name: str = "") -> list[str]:
    """Return this session's registry containers and volumes, only those named ``name*`` if given."""
    selector = {"label": [f"{labels.SESSION}={labels.session_id()}", f"{labels.TYPE}=registry"]}
    containers = [container.name for container in client.containers.list(all=True, filters=selector)]
    volumes = [volume.name for volume in client.volumes.list(filters=selector)]
    return [found for found in containers + volumes if found.startswith(name)]


def _get_v2(registry: Registry, authorization: tuple[str, str] | None) -> int:
    context = ssl.create_default_context(cafile=str(registry.ca_cert_path))
    connection = http.client.HTTPSConnection(registry.ip, 443, timeout=5, context=context)
    headers = {}
    if authorization:
        token = base64.b64encode(":".join(authorization).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        connection.request("GET", "/v2/", headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def _exec(container, command: str) -> str:
    result = container.exec_run(["sh", "-c", command])
    output = result.output.decode(errors="replace")
    assert result.exit_code == 0, f"`{command}` exited {result.exit_code}:\n{output}"
    return output


@pytest.fixture
def dind(engine_client):
    """Start dind stand-ins wired as a runner would wire a service; remove them afterwards."""
    started = []

    def start(wiring: Wiring):
        # dockerd 20.10.24 waits 15 s before serving plain TCP unless --tls=false states the intent.
        container = engine_client.containers.run(
            DIND_IMAGE, ["--tls=false"], detach=True, privileged=True, environment={"DOCKER_TLS_CERTDIR": ""},
            extra_hosts=list(wiring.extra_hosts), volumes=list(wiring.volumes),
            labels=labels.managed_labels("test-dind"),
            name=f"{labels.PREFIX}-{labels.session_id()}-dind-{len(started)}")
        started.append(container)
        deadline = time.monotonic() + 90
        while container.exec_run(["docker", "version"]).exit_code != 0:
            container.reload()
            assert container.status == "running", container.logs(tail=30).decode(errors="replace")
            assert time.monotonic() < deadline, container.logs(tail=30).decode(errors="replace")
            time.sleep(1)
        return container

    yield start
    for container in started:
        container.remove(force=True, v=True)


@pytest.fixture
def seed_registry(engine_client):
    with Registry(engine_client).with_hostnames([SEED_HOST]) as registry:
        yield registry
    assert _registry_resources(engine_client, registry.name) == []


@pytest.fixture
def seed_host_lock():
    """Hold the machine's /etc/hosts entry for ``SEED_HOST``; request it before ``seed_registry``.

    Host trust maps one name to one registry for the whole machine, so a second worker or session
    that installs it for its own registry meanwhile would fail or redirect the real engine.
    """
    with locks.machine_lock(f"host-trust-{SEED_HOST}"):
        yield


@pytest.mark.registry
def test_registry_requires_credentials(seed_registry):
    assert _get_v2(seed_registry, None) == 401
    assert _get_v2(seed_registry, (seed_registry.username, "wrong")) == 401
    assert _get_v2(seed_registry, (seed_registry.username, seed_registry.password)) == 200


@pytest.mark.registry
def test_registry_container_labelled(engine_client, seed_registry):
    container = engine_client.containers.get(seed_registry.name)

    assert container.labels[labels.SESSION] == labels.session_id()
    assert container.labels[labels.TYPE] == "registry"
    resources = _registry_resources(engine_client, seed_registry.name)
    assert resources == [seed_registry.name, seed_registry.volume.name]


@pytest.mark.registry
def test_registry_wiring_lists_names_and_certs(seed_registry):
    wiring = seed_registry.wiring()

    assert wiring.extra_hosts == (f"{SEED_HOST}:{seed_registry.ip}",)
    certs_dir = Path(wiring.volumes[0].split(":")[0])
    assert wiring.volumes[0].endswith(":/etc/docker/certs.d:ro")
    assert (certs_dir / SEED_HOST / "ca.crt").read_bytes() == seed_registry.ca_cert_path.read_bytes()


@pytest.mark.registry
def test_registry_stop_removes_everything(engine_client):
    registry = Registry(engine_client).with_hostnames(["stop.harness.invalid"]).start()
    certs_dir = session_dir() / "certs.d" / "stop.harness.invalid"
    assert certs_dir.is_dir()

    registry.stop()

    assert _registry_resources(engine_client, registry.name) == []
    assert not certs_dir.exists()


@pytest.mark.registry
def test_stopped_registry_tags_rejected(engine_client):
    registry = Registry(engine_client).with_hostnames(["stopped.harness.invalid"]).start()
    try:
        registry.container.stop(timeout=1)

        # Catches a listing sent to the freed address, where another registry may serve it.
        with pytest.raises(RegistryError, match="is not running"):
            registry.tags()
    finally:
        registry.stop()


@pytest.mark.registry
def test_registry_on_user_network(engine_client):
    network = engine_client.networks.create(f"{labels.PREFIX}-{labels.session_id()}-registry-net",
                                            labels=labels.managed_labels("test-network"))
    try:
        with Registry(engine_client).with_hostnames(["net.harness.invalid"]).with_network(network.name) as registry:
            network.reload()
            attached = {entry["Name"]: entry["IPv4Address"].split("/")[0]
                        for entry in network.attrs["Containers"].values()}

            assert attached == {registry.name: registry.ip}
            assert _get_v2(registry, (registry.username, registry.password)) == 200
    finally:
        network.remove()


@pytest.mark.registry
def test_registry_failed_start_leaves_nothing(engine_client):
    # busybox's shell exits at once without a terminal, so /v2/ never responds.
    registry = Registry(engine_client, image=BUSYBOX_IMAGE).with_hostnames(["broken.harness.invalid"])

    with pytest.raises(RegistryError, match="failed to start"):
        registry.start()

    assert _registry_resources(engine_client, registry.name) == []
    assert not (session_dir() / "certs.d" / "broken.harness.invalid").exists()


@pytest.mark.registry
def test_host_engine_push_pull(engine_client, seed_host_lock, seed_registry):
    reference = f"{SEED_HOST}/devopsman/host-test"
    image_id = build_scratch_image(engine_client, f"{reference}:1", labels.managed_labels("test-image"))
    trust = seed_registry.install_host_trust()
    auth = {"username": seed_registry.username, "password": seed_registry.password}
    try:
        assert f"{seed_registry.ip}\t{SEED_HOST}" in Path("/etc/hosts").read_text()
        # Without the wait, the daemon may use an older copy of the hosts file and send the login to
        # another test's registry, which rejects it with 401 (seen under pytest-xdist).
        trust.wait_for_daemon_cache()
        engine_client.login(registry=SEED_HOST, **auth)
        events = list(engine_client.images.push(reference, tag="1", auth_config=auth, stream=True, decode=True))
        assert not [event for event in events if "error" in event], events
        assert seed_registry.tags() == {"devopsman/host-test": ["1"]}
        engine_client.images.remove(f"{reference}:1")

        pulled = engine_client.images.pull(reference, tag="1", auth_config=auth)

        assert pulled.id == image_id
    finally:
        _ignore_image(engine_client, f"{reference}:1")
        seed_registry.stop()
    assert SEED_HOST not in Path("/etc/hosts").read_text()
    assert not (trust.certs_root / SEED_HOST).exists()


@pytest.mark.registry
def test_host_engine_login_wrong_password(engine_client, seed_host_lock, seed_registry):
    # An older copy of the hosts file could send the login to another registry, which also rejects it.
    seed_registry.install_host_trust().wait_for_daemon_cache()

    with pytest.raises(docker.errors.APIError, match="401|unauthorized"):
        engine_client.login(registry=SEED_HOST, username=seed_registry.username, password="wrong", reauth=True)


@pytest.mark.registry
@pytest.mark.dind
def test_dind_push_pull_through_wiring(seed_registry, dind):
    daemon = dind(seed_registry.wiring())
    reference = f"{SEED_HOST}/devopsman/test:1"
    _exec(daemon, "mkdir -p /tmp/ctx && echo dind > /tmp/ctx/stamp && "
                  "printf 'FROM scratch\\nCOPY stamp /stamp\\n' > /tmp/ctx/Dockerfile && "
                  f"docker build -q -t {reference} /tmp/ctx")

    _exec(daemon, f"docker login -u {seed_registry.username} -p {seed_registry.password} {SEED_HOST}")
    _exec(daemon, f"docker push {reference}")
    _exec(daemon, f"docker rmi {reference}")
    _exec(daemon, f"docker pull {reference}")

    assert _exec(daemon, f"docker image ls -q {reference}").strip()


@pytest.mark.registry
@pytest.mark.dind
def test_dind_rejects_wrong_password(seed_registry, dind):
    daemon = dind(seed_registry.wiring())

    result = daemon.exec_run(["docker", "login", "-u", seed_registry.username, "-p", "wrong", SEED_HOST])

    assert result.exit_code != 0
    assert b"unauthorized" in result.output.lower() or b"401" in result.output


@pytest.mark.registry
@pytest.mark.dind
def test_dind_pulls_busybox_from_mirror(engine_client, dind):
    with Mirror(engine_client).with_images({"busybox:latest": BUSYBOX_IMAGE}) as mirror:
        assert mirror.pushed == {"busybox:latest": "library/busybox:latest"}
        daemon = dind(mirror.wiring())

        output = _exec(daemon, "docker run --rm busybox echo from-mirror")
        info = _exec(daemon, "docker info --format '{{json .RegistryConfig.Mirrors}}'")

        assert "from-mirror" in output
        assert "https://harness-mirror/" in info
        assert "http.request.host=harness-mirror " in mirror.logs(tail=200)


@pytest.mark.registry
@pytest.mark.dind
def test_dind_combined_wiring_pull_then_push(engine_client, seed_registry, dind):
    reference = f"{SEED_HOST}/devopsman/marionxue-ops:nodedemo"
    with Mirror(engine_client).with_images({"busybox:latest": BUSYBOX_IMAGE}) as mirror:
        daemon = dind(seed_registry.wiring() + mirror.wiring())

        _exec(daemon, f"docker pull busybox && docker tag busybox {reference}")
        _exec(daemon, f"docker login -u {seed_registry.username} -p {seed_registry.password} {SEED_HOST}")
        _exec(daemon, f"docker push {reference} && docker rmi {reference} && docker pull {reference}")

    assert seed_registry.tags() == {"devopsman/marionxue-ops": ["nodedemo"]}


def _ignore_image(client: docker.DockerClient, reference: str) -> None:
    try:
        client.images.remove(reference)
    except docker.errors.ImageNotFound:
        pass


# Ctrl-C during start: the interrupt lands after each engine call in turn.


class _InterruptAfterCall:
    """Wraps the low-level API methods of one client; raises KeyboardInterrupt after step ``at``.

    A step is a run of calls of one method (wait_ready repeats inspect_container), named by the
    method and how many runs of it came before, so the steps do not shift when a start needs
    fewer polls. The interrupt comes right after the step's first call has run on the real
    engine: the resource it created exists while its handle was never returned, the worst
    moment for a Ctrl-C.
    """

    METHODS = ("inspect_image", "create_volume", "create_container", "start", "inspect_container",
               "put_archive", "tag", "push", "remove_image")

    def __init__(self, client: docker.DockerClient, monkeypatch, at: tuple[str, int] | None) -> None:
        self.steps: list[tuple[str, int]] = []
        self.tags: list[str] = []
        self.at = at
        self._last = ""
        for name in self.METHODS:
            monkeypatch.setattr(client.api, name, self._wrap(name, getattr(client.api, name)))

    def _wrap(self, name, method):
        def call(*args, **kwargs):
            if name == "tag":
                self.tags.append(f"{args[1]}:{kwargs.get('tag') or args[2]}")
            result = method(*args, **kwargs)
            if name != self._last:
                self.steps.append((name, sum(step[0] == name for step in self.steps)))
                self._last = name
                if self.steps[-1] == self.at:
                    raise KeyboardInterrupt(f"injected after {name} run {self.at[1]}")
            return result
        return call


def _host_trust_of(owner: str) -> list[str]:
    """Return /etc/hosts lines and certs.d entries whose harness marker names ``owner``."""
    found = [line for line in HOSTS_FILE.read_text().splitlines() if owner in line]
    if HOST_CERTS_DIR.is_dir():
        found += [str(marker) for marker in HOST_CERTS_DIR.glob(f"*/{MARKER_FILE}") if owner in marker.read_text()]
    return found


@pytest.mark.registry
@pytest.mark.parametrize("role", ["registry", "mirror"])
def test_interrupted_start_leaves_nothing(role, monkeypatch):
    def build(client):
        if role == "mirror":
            return Mirror(client).with_images([BUSYBOX_IMAGE])
        return Registry(client).with_hostnames(["interrupt.harness.invalid"])

    # A client of its own, because the wrappers must not reach the session's shared client.
    client = docker.from_env(timeout=60)
    try:
        recorder = _InterruptAfterCall(client, monkeypatch, at=None)
        build(client).start().stop()
        monkeypatch.undo()
        # The steps the interrupt must cover; catches a test that no longer reaches the engine.
        names = {name for name, _ in recorder.steps}
        assert {"create_volume", "create_container", "start", "put_archive"} <= names
        if role == "mirror":
            assert {"tag", "push", "remove_image"} <= names

        for step in recorder.steps:
            injector = _InterruptAfterCall(client, monkeypatch, at=step)
            registry = build(client)
            try:
                registry.start()
            except KeyboardInterrupt:
                interrupted = True
            else:
                interrupted = False
                registry.stop()
            monkeypatch.undo()
            # Only a readiness poll may be skipped, when /v2/ responded at the first try.
            assert interrupted or step[0] == "inspect_container", f"{step} was not reached: {injector.steps}"

            # Catches a resource created before the interrupt whose handle was never stored
            # (the storage volume after create_volume, the container after create_container),
            # the mirror's push tag after tag, and wiring files or host trust written before it.
            assert _registry_resources(client, registry.name) == [], step
            assert [tag for tag in injector.tags if client.images.list(name=tag.rsplit(":", 1)[0])] == [], step
            assert [str(path) for path in session_dir().glob(f"{registry.name}*")] == [], step
            assert not (session_dir() / "certs.d" / "interrupt.harness.invalid").exists(), step
            assert _host_trust_of(registry.name) == [], step
    finally:
        client.close()


def test_dood_teardown_keeps_push_tags(engine_client):
    """A DooD run's teardown on a shared engine keeps another session's registry push tag."""
    token = secrets.token_hex(4)
    image = engine_client.images.get("busybox:latest")
    with Registry(engine_client).with_hostnames([f"teardown-{token}.harness.invalid"]) as registry:
        push_tag, job_tag = f"{registry.ip}/library/busybox:push-{token}", f"harness-test/job-left:{token}"
        image.tag(push_tag)
        image.tag(job_tag)
        baseline = Snapshot(HOST, "before")
        # Only the two tags made here, so the teardown cannot touch anything else on the engine.
        final = Snapshot(HOST, "teardown", images=[push_tag, job_tag])
        try:
            remove_host_leftovers(engine_client, baseline, final)

            # Catches a teardown that removes the tag of a push in progress, which fails that push.
            assert push_tag in _tags(engine_client)
            assert job_tag not in _tags(engine_client)
        finally:
            for tag in (push_tag, job_tag):
                with contextlib.suppress(docker.errors.ImageNotFound):
                    engine_client.images.remove(tag)


def _tags(client) -> set[str]:
    return {tag for image in client.images.list() for tag in image.tags}
