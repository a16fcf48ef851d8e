"""Names GitLab Runner's docker executor gives to containers, volumes, networks and service hosts.

Pure functions of the runner token, the job payload and the runner version flags, so that a test
can predict every name a job creates before it runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import re
import secrets

RFC1123_MAX_LENGTH = 63

# Token prefixes the runner strips before it keeps 9 characters (GitLab Runner 18.2 and later).
_TOKEN_PREFIX = re.compile(r"^glrt-(t[123]_)?|^t[123]_|^glrtr-|^glcbt-|^GR[0-9A-Fa-f]{7}")
_LEGACY_GR_TOKEN = re.compile(r"^GR[0-9A-Fa-f]{7}")

# An image reference as the distribution/reference grammar defines it: name, tag, digest.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$")
_REGISTRY_PORT = re.compile(r"^(.*?)(|:[0-9]+)(|/.*)$")


def make_rfc1123_compatible(name: str) -> str:
    """Lowercase ``name``, drop characters outside ``[-a-z0-9]`` and leading dashes, cut to 63."""
    name = re.sub(r"[^-a-z0-9]", "", name.lower())
    name = re.sub(r"^[^a-z0-9]+", "", name)
    return name[:RFC1123_MAX_LENGTH]


def short_token(token: str, legacy: bool = False) -> str:
    """Return the runner's ``ShortDescription`` of ``token`` (``glrt-t1_abcdefghijk`` -> ``abcdefghi``).

    Args:
        token: The full runner authentication token.
        legacy: Cut by the fixed offsets of runners before 18.2.
    """
    if legacy:
        return _legacy_short_token(token)
    stripped = _TOKEN_PREFIX.sub("", token, count=1)
    return stripped[:9]


def _legacy_short_token(token: str) -> str:
    if len(token) < 8:
        return token
    if token.startswith("glrt-"):
        return token[5:14]
    if token.startswith(("glrtr-", "glcbt-")):
        return token[6:15]
    if len(token) >= 17 and _LEGACY_GR_TOKEN.match(token):
        return token[:17]
    return token[:8]


def project_unique_name(short: str, project_id: int, concurrent_id: int) -> str:
    """Return ``runner-<short>-project-<id>-concurrent-<n>``, the build and helper hostname."""
    return make_rfc1123_compatible(f"runner-{short}-project-{project_id}-concurrent-{concurrent_id}")


def project_unique_short_name(short: str, project_id: int, concurrent_id: int, job_id: int) -> str:
    """Return ``runner-<short>-<project>-<concurrent>-<job>``, the per-build network name (17.2+)."""
    return make_rfc1123_compatible(f"runner-{short}-{project_id}-{concurrent_id}-{job_id}")


def project_real_unique_name(token: str, system_id: str, project_id: int, concurrent_id: int) -> str:
    """Return ``runner-`` plus 32 hex characters of a SHA-256 over token, system, project and slot."""
    material = f"{token}-{system_id}-{project_id}-{concurrent_id}".encode()
    return "runner-" + hashlib.sha256(material).hexdigest()[:32]


def random_prefix(unique_name: str, random_hex: str | None = None) -> str:
    """Return the per-job container prefix ``<unique name>-<16 hex>`` (random unless given)."""
    return f"{unique_name}-{random_hex or secrets.token_hex(8)}"


def build_container_name(prefix: str) -> str:
    """Return the build container's name for the per-job ``prefix``."""
    return f"{prefix}-build"


def predefined_container_name(prefix: str) -> str:
    """Return the predefined (helper) container's name for the per-job ``prefix``."""
    return f"{prefix}-predefined"


def per_stage_container_name(prefix: str, kind: str, created: int) -> str:
    """Return ``<prefix>-<kind>-<n>`` of runners before 16.0: n counts the job containers made before."""
    return f"{prefix}-{kind}-{created}"


def service_container_name(prefix: str, slug: str, index: int) -> str:
    """Return ``<prefix>-<slug>-<index>``; the slug never contains the user's alias."""
    return f"{prefix}-{slug}-{index}"


def health_check_container_name(service_container: str) -> str:
    """Return the name of the container that waits for ``service_container``."""
    return f"{service_container}-wait-for-service"


def permission_container_name(volume: str, random_hex: str | None = None) -> str:
    """Return the name of the throwaway container that opens a new cache volume's permissions."""
    return f"{volume}-set-permission-{random_hex or secrets.token_hex(8)}"


def network_name(short: str, project_id: int, concurrent_id: int, job_id: int, legacy: bool = False) -> str:
    """Return the FF_NETWORK_PER_BUILD network name.

    Args:
        legacy: Use the name of runners before 17.2,
            ``runner-<short>-project-<id>-concurrent-<n>-job-<job>-network``.
    """
    if legacy:
        return f"{project_unique_name(short, project_id, concurrent_id)}-job-{job_id}-network"
    return project_unique_short_name(short, project_id, concurrent_id, job_id)


def path_hash(container_path: str) -> str:
    """Return the md5 hex digest of a container path (``/cache`` -> ``3c3f06...415a70``)."""
    return hashlib.md5(container_path.encode()).hexdigest()


def cache_volume_name(unique_name: str, container_path: str, protected: bool = False) -> str:
    """Return ``<unique name>-cache-<md5(path)>`` plus ``-protected`` for protected refs.

    ``unique_name`` is ``project_real_unique_name`` for a reusable volume (18.4+), the
    ``project_unique_name`` before 18.4, or the per-job prefix for a temporary volume.
    """
    suffix = "-protected" if protected else ""
    return f"{unique_name}-cache-{path_hash(container_path)}{suffix}"


def cache_dir_bind_source(cache_dir: str, unique_name: str, container_path: str, protected: bool = False) -> str:
    """Return the host directory that replaces a cache volume when ``cache_dir`` is set."""
    suffix = "-protected" if protected else ""
    return posixpath.join(cache_dir, unique_name, path_hash(container_path) + suffix)


@dataclasses.dataclass(frozen=True)
class ServiceName:
    """A service image reference split the way the runner derives hostnames from it.

    Attributes:
        image: Reference to pull or run; ``:latest`` is appended when it has no tag or digest.
        version: Tag or digest, ``latest`` when neither is given.
        service: Image name without tag and without a registry port.
        aliases: Hostnames derived from ``service`` (``/`` -> ``__``, then ``/`` -> ``-``).
    """

    image: str
    version: str
    service: str
    aliases: tuple[str, ...]

    @property
    def slug(self) -> str:
        """Return the part of the service container name that comes from the image."""
        return self.service.replace("/", "__")


def split_name_and_version(description: str) -> ServiceName:
    """Split a ``services:`` image reference into image, version, service name and aliases."""
    match = _REFERENCE.match(description)
    if not match:
        return ServiceName(description, "latest", description, (description.replace("/", "__"),))

    name, tag, digest = match.group(1), match.group(2), match.group(3)
    version = tag or digest or "latest"
    image = description if (tag or digest) else f"{description}:latest"

    parts = _REGISTRY_PORT.match(name)
    service = parts.group(1) + parts.group(3)
    aliases = [service.replace("/", "__")]
    dashed = service.replace("/", "-")
    if dashed != aliases[0]:
        aliases.append(dashed)
    return ServiceName(image, version, service, tuple(aliases))


def split_user_aliases(alias: str | None) -> list[str]:
    """Split a user ``alias:`` on commas and whitespace (``"a,b c"`` -> ``a``, ``b``, ``c``)."""
    return (alias or "").replace(",", " ").split()


def service_aliases(description: str, user_alias: str | None) -> list[str]:
    """Return every hostname of a service: image-derived aliases first, then the user's."""
    aliases = list(split_name_and_version(description).aliases)
    for alias in split_user_aliases(user_alias):
        if alias not in aliases:
            aliases.append(alias)
    return aliases
