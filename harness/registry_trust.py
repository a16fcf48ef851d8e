"""TLS and name trust for the harness registries: the CA, host-engine entries and runner wiring.

The CA lives under ``<state dir>/registry/ca`` and is reused across runs, so a trust directory
made in one run stays valid in the next. Host trust is what a DooD job needs, because the job
talks to the host engine: ``/etc/docker/certs.d/<name>/ca.crt``, which dockerd reads on every
registry connection without a restart, and a marked block in ``/etc/hosts``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import labels
from harness.engine import state_dir
from harness.errors import RegistryError

log = logging.getLogger(__name__)

HOST_CERTS_DIR = Path("/etc/docker/certs.d")
HOSTS_FILE = Path("/etc/hosts")
MARKER_FILE = ".dind-dood-harness"
CA_LIFETIME = datetime.timedelta(days=3650)
CA_RENEW_BEFORE = datetime.timedelta(days=90)
SERVER_LIFETIME = datetime.timedelta(days=30)
# Go's resolver keeps its copy of the hosts file for 5 s without checking the file (cacheMaxAge in
# Go's net/hosts.go). For that long a daemon written in Go, such as dockerd, may still send a name to
# the address it had before the harness changed the file.
DAEMON_HOSTS_CACHE_SECONDS = 5.0


def registry_state_dir() -> Path:
    """Return ``<state dir>/registry``, where the CA and per-session wiring files live."""
    return state_dir() / "registry"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so parallel harness processes take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class CertificateAuthority:
    """The harness CA (ECDSA P-256), created on first use and reused while valid for 90 more days."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory else registry_state_dir() / "ca"
        with _locked(self.directory / ".lock"):
            self._key, self._cert = self._load() or self._create()

    @property
    def cert_path(self) -> Path:
        """PEM file of the CA certificate, the ``ca.crt`` every trust directory gets."""
        return self.directory / "ca.crt"

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, hostnames: Sequence[str], ips: Sequence[str] = ()) -> tuple[bytes, bytes]:
        """Issue a 30-day server certificate for ``hostnames`` and ``ips``.

        Returns:
            The certificate and its unencrypted private key, both PEM.
        """
        if not hostnames and not ips:
            raise RegistryError("a server certificate needs at least one hostname or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName(name) for name in hostnames]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        now = _utc_now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(hostnames) or list(ips))[0])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + SERVER_LIFETIME)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False)
        )
        certificate = builder.sign(self._key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem

    def _load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
        key_path = self.directory / "ca.key"
        if not key_path.exists() or not self.cert_path.exists():
            return None
        certificate = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        if certificate.not_valid_after_utc < _utc_now() + CA_RENEW_BEFORE:
            log.info("harness CA %s expires %s; creating a new one", self.cert_path,
                     certificate.not_valid_after_utc)
            return None
        return serialization.load_pem_private_key(key_path.read_bytes(), password=None), certificate

    def _create(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{labels.PREFIX} registry CA")])
        now = _utc_now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        # The mode is set on the open descriptor, so the key is never readable by others, not even
        # when an expired CA's key file is overwritten.
        descriptor = os.open(self.directory / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(descriptor, 0o600)
            handle.write(key_pem)
        self.cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        log.info("created harness CA %s", self.cert_path)
        return key, certificate


@dataclass(frozen=True)
class Wiring:
    """Runner settings for ``[runners.docker]`` that let jobs and their services reach a registry.

    GitLab Runner gives ``extra_hosts`` and ``volumes`` to build and service containers alike, so a
    ``docker:dind`` service resolves the registry names locally and trusts the harness CA.

    Attributes:
        extra_hosts: ``"<hostname>:<ip>"`` entries for ``extra_hosts``.
        volumes: ``"<host path>:<container path>:ro"`` binds for ``volumes``.
    """

    extra_hosts: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()

    def __add__(self, other: Wiring) -> Wiring:
        """Combine two wirings, dropping duplicates.

        Raises:
            RegistryError: both bind different host paths to one container path, or map one
                hostname to different addresses.
        """
        extra_hosts = _merge_pairs(self.extra_hosts, other.extra_hosts, ":", "hostname")
        volumes = _merge_pairs(self.volumes, other.volumes, ":", "container path", key_index=1)
        return Wiring(extra_hosts, volumes)


def _merge_pairs(first: tuple[str, ...], second: tuple[str, ...], separator: str, what: str,
                 key_index: int = 0) -> tuple[str, ...]:
    merged: dict[str, str] = {}
    for entry in (*first, *second):
        key = entry.split(separator)[key_index]
        if merged.get(key, entry) != entry:
            raise RegistryError(f"wiring conflict on {what} {key}: {merged[key]!r} and {entry!r}")
        merged[key] = entry
    return tuple(merged.values())


def _block_markers(block_id: str) -> tuple[str, str]:
    return f"# BEGIN {labels.PREFIX} {block_id}", f"# END {labels.PREFIX} {block_id}"


def add_hosts_block(text: str, block_id: str, entries: dict[str, str]) -> str:
    """Return hosts file ``text`` with a marked block mapping each name in ``entries`` to its IP."""
    begin, end = _block_markers(block_id)
    lines = [begin, *(f"{ip}\t{name}" for name, ip in entries.items()), end]
    prefix = text if not text or text.endswith("\n") else text + "\n"
    return prefix + "\n".join(lines) + "\n"


def remove_hosts_blocks(text: str, block_id_prefix: str) -> str:
    """Return hosts file ``text`` without the marked blocks whose id starts with ``block_id_prefix``."""
    begin = re.escape(f"# BEGIN {labels.PREFIX} {block_id_prefix}")
    pattern = re.compile(rf"^{begin}[^\n]*\n.*?^# END {re.escape(labels.PREFIX)} [^\n]*(\n|\Z)",
                         re.MULTILINE | re.DOTALL)
    return pattern.sub("", text)


def _rewrite_in_place(path: Path, change) -> None:
    # /etc/hosts is often a bind mount (containers, sandboxes), where a rename would fail or
    # detach the file, so it is rewritten through the same inode.
    with _locked(registry_state_dir() / "hosts.lock"), open(path, "r+") as handle:
        new_text = change(handle.read())
        handle.seek(0)
        handle.write(new_text)
        handle.truncate()


def _resolve_v4(name: str, files_only: bool) -> set[str]:
    # ahostsv4 requests IPv4 addresses only, so a match in /etc/hosts ends the lookup. A lookup that
    # also requests IPv6 would pass a name that /etc/hosts maps only to IPv4 on to DNS.
    command = ["getent", *(["-s", "files"] if files_only else []), "ahostsv4", name]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


class HostTrust:
    """``certs.d`` entries and an ``/etc/hosts`` block that let the host engine reach one registry.

    IP addresses in ``names`` get a ``certs.d`` entry only, and DNS names also get a hosts entry.
    The check after writing asks ``resolve``, by default this machine's resolver, which reads
    ``/etc/hosts``. Another ``hosts_file`` therefore needs a ``resolve`` that reads it.
    """

    def __init__(self, ip: str, ca_pem: bytes, names: Sequence[str], owner: str,
                 certs_root: Path = HOST_CERTS_DIR, hosts_file: Path = HOSTS_FILE,
                 resolve: Callable[[str, bool], set[str]] | None = None) -> None:
        self.ip = ip
        # Resolves a name as the daemon that reads hosts_file does; (name, files_only) -> addresses.
        self.resolve = resolve or _resolve_v4
        self.names = list(names)
        self.certs_root = Path(certs_root)
        self.hosts_file = Path(hosts_file)
        self.block_id = f"{labels.session_id()} {owner}"
        self._ca_pem = ca_pem
        self._trust_dirs: list[Path] = []
        self._created_dirs: list[Path] = []
        # When install() wrote the hosts block (time.monotonic()), or None while none is written.
        self._hosts_written_at: float | None = None

    @property
    def dns_names(self) -> list[str]:
        """The names that are not IP addresses and so need a hosts entry."""
        return [name for name in self.names if not is_ip_address(name)]

    def install(self) -> None:
        """Write the trust directories and the hosts block, then check every name resolves to ``ip``.

        Raises:
            RegistryError: a trust directory exists without the harness marker, or a name resolves
                elsewhere; everything written so far is removed first.
        """
        try:
            for name in self.names:
                self._write_trust_dir(name)
            if self.dns_names:
                entries = {name: self.ip for name in self.dns_names}
                _rewrite_in_place(self.hosts_file, lambda text: add_hosts_block(text, self.block_id, entries))
                self._hosts_written_at = time.monotonic()
                self._verify_resolution()
        except OSError as error:
            self.remove()
            raise RegistryError(f"writing host trust for {', '.join(self.names)} failed: {error}; run as "
                                f"root so that {self.certs_root} and {self.hosts_file} are writable") from error
        except BaseException:
            self.remove()
            raise
        log.info("host engine trusts %s at %s", ", ".join(self.names), self.ip)

    def wait_for_daemon_cache(self) -> float:
        """Wait until no daemon can still hold the hosts file from before :meth:`install`.

        A daemon that read the file just before the new block was written keeps that copy for
        ``DAEMON_HOSTS_CACHE_SECONDS``, and meanwhile sends the names to their previous address,
        such as another registry that got the same IP. Nothing waits if no block was written.

        Returns:
            The seconds waited.
        """
        if self._hosts_written_at is None:
            return 0.0
        remaining = self._hosts_written_at + DAEMON_HOSTS_CACHE_SECONDS - time.monotonic()
        if remaining <= 0:
            return 0.0
        time.sleep(remaining)
        return remaining

    def remove(self) -> None:
        """Delete what :meth:`install` wrote. Calling it again does nothing."""
        if self._hosts_written_at is not None:
            _rewrite_in_place(self.hosts_file, lambda text: remove_hosts_blocks(text, self.block_id))
            self._hosts_written_at = None
        for directory in self._trust_dirs:
            (directory / "ca.crt").unlink(missing_ok=True)
            (directory / MARKER_FILE).unlink(missing_ok=True)
        # Parents such as certs.d may have gained other entries meanwhile, so only empty ones go.
        for path in reversed([*self._created_dirs, *self._trust_dirs]):
            with contextlib.suppress(OSError):
                path.rmdir()
        self._trust_dirs.clear()
        self._created_dirs.clear()

    def _write_trust_dir(self, name: str) -> None:
        directory = self.certs_root / name
        marker = directory / MARKER_FILE
        if directory.exists() and not marker.exists():
            raise RegistryError(f"{directory} exists and was not made by the harness; move it away "
                                f"or use another hostname than {name}")
        if marker.exists() and _owner_alive(marker.read_text()):
            raise RegistryError(f"{directory} is in use by harness session {marker.read_text().strip()}; "
                                f"stop that session or use another hostname than {name}")
        missing = []
        path = directory
        while not path.exists():
            missing.append(path)
            path = path.parent
        for path in reversed(missing):
            path.mkdir()
            self._created_dirs.append(path)
        self._trust_dirs.append(directory)
        marker.write_text(f"{self.block_id} {os.getpid()}\n")
        (directory / "ca.crt").write_bytes(self._ca_pem)

    def _verify_resolution(self) -> None:
        # The files-only lookup comes first, so no DNS query for a name leaves the machine unless
        # /etc/hosts maps it. The full lookup then confirms that nsswitch consults files first.
        for name in self.dns_names:
            for files_only in (True, False):
                found = self.resolve(name, files_only)
                if found != {self.ip}:
                    source = f"{self.hosts_file} (files only)" if files_only else "the system resolver"
                    raise RegistryError(f"{name} resolves to {sorted(found) or 'nothing'} via {source}, not to "
                                        f"the registry at {self.ip}; remove other entries for {name} "
                                        "from /etc/hosts")


def _owner_alive(marker_text: str) -> bool:
    """Return whether the process named last in a trust marker (``session owner pid``) still runs."""
    try:
        os.kill(int(marker_text.split()[-1]), 0)
    except (ProcessLookupError, ValueError, IndexError):
        return False
    except PermissionError:
        return True
    return True


def remove_session_host_trust(session: str, certs_root: Path = HOST_CERTS_DIR,
                              hosts_file: Path = HOSTS_FILE) -> None:
    """Remove the hosts blocks and trust directories a (possibly dead) harness session left."""
    _rewrite_in_place(hosts_file, lambda text: remove_hosts_blocks(text, f"{session} "))
    if not certs_root.is_dir():
        return
    for directory in certs_root.iterdir():
        marker = directory / MARKER_FILE
        if marker.is_file() and marker.read_text().startswith(f"{session} "):
            (directory / "ca.crt").unlink(missing_ok=True)
            marker.unlink()
            with contextlib.suppress(OSError):
                directory.rmdir()
            log.info("removed stale trust directory %s of session %s", directory, session)


def is_ip_address(value: str) -> bool:
    """Return whether ``value`` is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
