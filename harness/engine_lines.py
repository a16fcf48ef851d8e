"""The Docker engine versions the nightly matrix runs, and how each one's dind image behaves.

Each line pairs the ``docker:<version>-dind`` and ``docker:<version>-cli`` stand-ins of one Debian
suite's docker.io (recipes ``dind-*`` and ``cli-*`` in ``docker/images.toml``) with the outcome
that version's official image has when ``DOCKER_TLS_CERTDIR`` is empty. The line ``19.03`` is the
harness's default ``docker:dind``: Debian bookworm's 20.10 daemon started with ``--tls=false``,
so plain TCP starts at once, as it did before 20.10. The line ``1.12`` is the same daemon in
the image of the era before TLS by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import InputError
from harness.image_catalog import split_tag

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
        tls_default: True when the images set ``DOCKER_TLS_CERTDIR=/certs``, as the official
            images do from 19.03 on. The 1.12 line listens on plain TCP unless a job asks for TLS.
    """

    name: str
    dind_image: str
    cli_image: str
    recipes: tuple[str, ...]
    debian_suite: str
    plain_tcp_delayed: bool
    tls_default: bool = True

    @property
    def slug(self) -> str:
        """The name without dots, for job names, file names and CI variables (``26-1``)."""
        return self.name.replace(".", "-")


ENGINE_LINES = (
    EngineLine("1.12", "docker:1.12.6-dind", "docker:1.12.6", ("dind-legacy", "docker-cli-legacy"), "bookworm",
               False, tls_default=False),
    EngineLine("19.03", "docker:19.03.7-dind", "docker:19.03.7", ("dind", "docker-cli"), "bookworm", False),
    EngineLine("20.10", "docker:20.10-dind", "docker:20.10-cli", ("dind-20",), "bookworm", True),
    EngineLine("26.1", "docker:26.1-dind", "docker:26.1-cli", ("dind-26",), "trixie", True),
    EngineLine("28.5", "docker:28.5-dind", "docker:28.5-cli", ("dind-28",), "sid", True),
)
DEFAULT_LINE = "19.03"


def substitute_image(reference: str, line: EngineLine) -> str:
    """Return the image of ``line`` that replaces ``reference`` in a job, or ``reference`` itself.

    Every ``docker`` dind image (``docker:dind``, ``docker:19.03.7-dind``) becomes the line's dind
    image, and every other ``docker`` image (``docker:stable``, ``docker``) its client image.
    """
    repository, tag = split_tag(reference)
    if repository not in ("docker", "docker.io/library/docker"):
        return reference
    return line.dind_image if tag == "dind" or tag.endswith("-dind") else line.cli_image


def substitute_payload_images(payload: dict, line: EngineLine) -> dict:
    """Return a copy of a job payload whose job image and service images come from ``line``."""
    copy = dict(payload)
    if (payload.get("image") or {}).get("name"):
        copy["image"] = {**payload["image"], "name": substitute_image(payload["image"]["name"], line)}
    copy["services"] = [{**service, "name": substitute_image(service["name"], line)} if service.get("name")
                        else service for service in payload.get("services") or ()]
    return copy


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
