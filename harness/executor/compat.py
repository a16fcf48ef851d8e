"""GitLab Runner version differences that the executor can reproduce, kept in one place."""

from __future__ import annotations

import dataclasses

CURRENT_VERSION = "19.4.0"


def _version_tuple(version: str) -> tuple[int, ...]:
    """Parse ``"18.6.1"`` or ``"v18.6.1"`` into ``(18, 6, 1)``, ignoring a pre-release suffix."""
    core = version.lstrip("v").split("-", 1)[0]
    return tuple(int(part) for part in core.split(".") if part.isdigit())


@dataclasses.dataclass(frozen=True)
class RunnerCompat:
    """The behaviour of one GitLab Runner release, as flags; the defaults are the current 19.x runner.

    Attributes:
        version: Runner version shown in the trace and exported as ``CI_RUNNER_VERSION``.
        legacy_links: Before 18.7 the default bridge used real Docker ``--link`` entries
            (``/etc/hosts`` plus ``<ALIAS>_PORT_*`` variables) instead of ``ExtraHosts``.
        container_per_stage: Before 16.0 a new build or predefined container was created for
            every stage (``<prefix>-build-<n>``).
        cache_volume_naming_pre_18_4: Before 18.4 reusable cache volumes were named after
            ``ProjectUniqueName`` instead of the hash-based ``ProjectRealUniqueName`` and had
            no ``-protected`` suffix.
        short_token_pre_18_2: Before 18.2 the short token was cut by fixed offsets.
        network_name_pre_17_2: Before 17.2 the per-build network was named
            ``<project unique name>-job-<id>-network``.
    """

    version: str = CURRENT_VERSION
    legacy_links: bool = False
    container_per_stage: bool = False
    cache_volume_naming_pre_18_4: bool = False
    short_token_pre_18_2: bool = False
    network_name_pre_17_2: bool = False

    @classmethod
    def for_version(cls, version: str) -> RunnerCompat:
        """Return the flags of runner ``version`` (for example ``"18.6.0"``)."""
        numbers = _version_tuple(version)
        return cls(
            version=version.lstrip("v"),
            legacy_links=numbers < (18, 7),
            container_per_stage=numbers < (16, 0),
            cache_volume_naming_pre_18_4=numbers < (18, 4),
            short_token_pre_18_2=numbers < (18, 2),
            network_name_pre_17_2=numbers < (17, 2),
        )
