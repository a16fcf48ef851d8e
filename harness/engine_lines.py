"""The Docker engine versions the nightly matrix runs, and how each one's dind image behaves.

Each line pairs the ``docker:<version>-dind`` and ``docker:<version>-cli`` stand-ins of one Debian
suite's docker.io (recipes ``dind-*`` and ``cli-*`` in ``docker/images.toml``) with the outcome
that version's official image has when ``DOCKER_TLS_CERTDIR`` is empty. The line ``19.03`` is the
harness's default ``docker:dind``: Debian bookworm's 20.10 daemon started with ``--tls=false``,
so plain TCP starts at once, as it did before 20.10.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import InputError

# dockerd 20.10 to 26.x wait 1 s plus 15 s before serving plain TCP that --tls=false did not ask for.
PLAIN_TCP_DELAY_SECONDS = 15


@dataclass(frozen=True)
class EngineLine:
    """One engine version of the matrix.

    Attributes:
        name: The version line, as in the official image tags (``26.1``).
        dind_image: The dind service image jobs name.
        cli_image: The client image jobs run in.
        recipes: Image recipes that build both images; ``images.ensure_images`` builds the rest.
        debian_suite: The Debian suite whose docker.io the images carry.
        plain_tcp_delayed: True when the daemon delays its start on plain TCP (empty
            ``DOCKER_TLS_CERTDIR``) by ``PLAIN_TCP_DELAY_SECONDS``.
    """

    name: str
    dind_image: str
    cli_image: str
    recipes: tuple[str, ...]
    debian_suite: str
    plain_tcp_delayed: bool

    @property
    def slug(self) -> str:
        """The name without dots, for job names, file names and CI variables (``26-1``)."""
        return self.name.replace(".", "-")


ENGINE_LINES = (
    EngineLine("19.03", "docker:19.03.7-dind", "docker:19.03.7", ("dind", "docker-cli"), "bookworm", False),
    EngineLine("20.10", "docker:20.10-dind", "docker:20.10-cli", ("dind-20",), "bookworm", True),
    EngineLine("26.1", "docker:26.1-dind", "docker:26.1-cli", ("dind-26",), "trixie", True),
    EngineLine("28.5", "docker:28.5-dind", "docker:28.5-cli", ("dind-28",), "sid", True),
)
DEFAULT_LINE = "19.03"


def engine_line(name: str, source: str = "--dind-version") -> EngineLine:
    """Return the engine line called ``name``.

    Raises:
        InputError: no line has that name.
    """
    for line in ENGINE_LINES:
        if line.name == name:
            return line
    names = ", ".join(line.name for line in ENGINE_LINES)
    raise InputError(source, name, "no engine version of that name", f"use one of {names}")
