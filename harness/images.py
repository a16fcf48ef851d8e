"""Offline image forge: builds the stand-in images from the recipes in ``docker/images.toml``.

No container registry is reachable from this machine, so every image a scenario names (busybox,
alpine, docker:dind, ...) is built here from Debian packages and tagged with its upstream name.
Each image carries the labels ``STAND_IN``, ``RECIPE_HASH`` and ``UPSTREAM`` from harness.labels,
and is rebuilt only when the hash of its recipe changes.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker

from harness import labels
from harness.engine import state_dir
from harness.engine_versions import EngineVersions
from harness.errors import HarnessError, ImageError, InputError
from harness.image_catalog import (
    CATALOG,
    ROOTFS_ARGS,
    SPECIAL_SOURCES,
    Recipe,
    build_order,
    content_hash,
    dependencies,
    load_catalog,
    normalize_tag,
    split_tag,
)

log = logging.getLogger(__name__)

INTERNAL_PREFIX = f"{labels.PREFIX}/"
# The engine colors RUN output on stderr; the codes would garble logs and error messages.
# Hosts that RUN steps of the recipes fetch Debian packages from (see docker/images.toml).
PACKAGE_MIRRORS = ("deb.debian.org",)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class ImageResult:
    """Outcome of ``ensure_images`` for one recipe.

    ``action`` is one of: built, tagged (an image with the current hash got its missing tags),
    up to date, upstream (a real upstream image is kept), skipped, pulled.
    """

    recipe: str
    tags: tuple[str, ...]
    action: str
    seconds: float = 0.0
    image_id: str | None = None
    size: int | None = None


@dataclass
class ForgeReport:
    """Results of one ``ensure_images`` call, in build order."""

    results: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def built(self) -> list[str]:
        """Names of the recipes that were built in this call."""
        return [result.recipe for result in self.results if result.action == "built"]

    def summary(self) -> str:
        """Return one line counting the results by action."""
        counts = collections.Counter(result.action for result in self.results)
        parts = ", ".join(f"{count} {action}" for action, count in sorted(counts.items()))
        return f"images: {parts or 'nothing to do'} in {self.seconds:.1f} s"


@dataclass(frozen=True)
class ImageRow:
    """One tag of the catalog as the engine has it. ``recipe_changed`` is None when not applicable.

    ``engine_version`` is the version of the docker daemon, or else client, inside the image; empty
    for images without one. ``on_demand`` marks recipes that a build of all images leaves out.
    """

    tag: str
    recipe: str
    present: bool
    stand_in: bool
    recipe_changed: bool | None
    image_id: str | None
    size: int | None
    engine_version: str = ""
    on_demand: bool = False


def recipe_hashes(client: docker.DockerClient, catalog: dict[str, Recipe]) -> dict[str, str]:
    """Compute the current hash of every recipe; external ``from`` images enter it by image id."""
    hashes: dict[str, str] = {}
    for recipe in build_order(catalog, catalog.values()):
        digest = hashlib.sha256(content_hash(recipe).encode())
        digest.update(f"tags {' '.join(recipe.tags)}\n".encode())
        for dependency in dependencies(recipe, catalog):
            digest.update(f"from {dependency} {hashes[dependency]}\n".encode())
        for source in recipe.sources:
            if source not in catalog and source not in SPECIAL_SOURCES:
                info = _inspect(client, source)
                digest.update(f"from {source} {info['Id'] if info else 'missing'}\n".encode())
        hashes[recipe.name] = digest.hexdigest()
    return hashes


def _inspect(client: docker.DockerClient, reference: str) -> dict | None:
    try:
        return client.api.inspect_image(reference)
    except docker.errors.ImageNotFound:
        return None


def _labels_of(info: dict | None) -> dict[str, str]:
    return ((info or {}).get("Config") or {}).get("Labels") or {}


@contextmanager
def _forge_lock() -> Iterator[None]:
    """Hold an exclusive lock so parallel test workers do not build the same image twice."""
    directory = state_dir() / "images"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "forge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _select(catalog: dict[str, Recipe], names: Iterable[str] | None, path: Path) -> list[Recipe]:
    if not names:
        return [recipe for recipe in catalog.values() if not recipe.on_demand]
    by_tag = {tag: recipe for recipe in catalog.values() for tag in recipe.tags}
    selected = []
    for name in names:
        recipe = catalog.get(name) or by_tag.get(normalize_tag(name))
        if recipe is None:
            raise InputError(str(path), name, "no recipe or tag of that name",
                             f"use one of the recipes: {', '.join(catalog)}")
        selected.append(recipe)
    return selected


def ensure_images(client: docker.DockerClient, names: Iterable[str] | None = None, pull: bool = False,
                  catalog_path: Path = CATALOG) -> ForgeReport:
    """Build the images of ``names`` (recipes or tags) that are missing or stale.

    Without names every recipe but the ``on_demand`` ones is built.

    Dependencies are built first. With ``pull`` the upstream images are pulled instead.

    Raises:
        InputError: the catalog or a name is invalid.
        ImageError: a build or pull failed.
    """
    catalog = load_catalog(catalog_path)
    selected = _select(catalog, names, catalog_path)
    if pull:
        return _pull_images(client, selected)

    started = time.monotonic()
    report = ForgeReport()
    with _forge_lock():
        hashes = recipe_hashes(client, catalog)
        skipped: set[str] = set()
        for recipe in build_order(catalog, selected, catalog_path):
            result = _ensure_recipe(client, recipe, hashes[recipe.name], catalog, skipped)
            if result.action == "skipped":
                skipped.add(recipe.name)
            report.results.append(result)
    report.seconds = time.monotonic() - started
    log.info("%s", report.summary())
    return report


def _skip_reason(recipe: Recipe, catalog: dict[str, Recipe], skipped: set[str]) -> str | None:
    """Return why ``recipe`` cannot be built now, or None when it can."""
    missing_dependencies = [name for name in dependencies(recipe, catalog) if name in skipped]
    if missing_dependencies:
        return f"it needs the skipped recipes {', '.join(missing_dependencies)}"
    if not recipe.recipe_file.is_file():
        if not recipe.optional:
            raise ImageError(f"recipe {recipe.name}: {recipe.recipe_file} is missing; restore it from git")
        return f"{recipe.recipe_file} is missing"
    return None


def _ensure_recipe(client: docker.DockerClient, recipe: Recipe, recipe_hash: str,
                   catalog: dict[str, Recipe], skipped: set[str]) -> ImageResult:
    """Build or tag the images of ``recipe`` unless every tag already carries ``recipe_hash``."""
    reason = _skip_reason(recipe, catalog, skipped)
    if reason:
        log.warning("skipping %s: %s", recipe.name, reason)
        return ImageResult(recipe.name, recipe.tags, "skipped")

    infos = {tag: _inspect(client, tag) for tag in recipe.tags}
    upstream = [tag for tag, info in infos.items()
                if info and not tag.startswith(INTERNAL_PREFIX) and labels.STAND_IN not in _labels_of(info)]
    if upstream:
        # A real upstream image, pulled with --pull or loaded by hand, is kept instead of the stand-in.
        log.info("keeping the upstream image %s; remove it to build the stand-in", ", ".join(upstream))
        info = infos[upstream[0]]
        return ImageResult(recipe.name, recipe.tags, "upstream", 0.0, info["Id"], info["Size"])

    fresh = [tag for tag, info in infos.items() if _labels_of(info).get(labels.RECIPE_HASH) == recipe_hash]
    if len(fresh) == len(recipe.tags):
        log.debug("%s is up to date (%s)", recipe.name, recipe_hash[:12])
        info = infos[recipe.tags[0]]
        return ImageResult(recipe.name, recipe.tags, "up to date", 0.0, info["Id"], info["Size"])

    started = time.monotonic()
    if fresh:
        action, image_id = "tagged", infos[fresh[0]]["Id"]
    else:
        state = "recipe changed" if any(infos.values()) else "missing"
        log.info("building %s (%s) from %s: %s", recipe.name, ", ".join(recipe.tags), recipe.directory, state)
        action, image_id = "built", _build(client, recipe, recipe_hash)
    for tag in recipe.tags:
        client.api.tag(image_id, *split_tag(tag))
    _remove_replaced(client, {info["Id"] for info in infos.values() if info} - {image_id})

    seconds = time.monotonic() - started
    size = client.api.inspect_image(image_id)["Size"]
    log.info("%s %s in %.1f s, %s", action, ", ".join(recipe.tags), seconds, format_size(size))
    return ImageResult(recipe.name, recipe.tags, action, seconds, image_id, size)


def _remove_replaced(client: docker.DockerClient, image_ids: set[str]) -> None:
    """Remove stale images that lost their last tag, unless containers or child images still use them."""
    for image_id in image_ids:
        try:
            if client.api.inspect_image(image_id)["RepoTags"]:
                continue
            client.api.remove_image(image_id)
            log.debug("removed replaced image %s", image_id)
        except docker.errors.APIError as error:
            log.debug("kept replaced image %s: %s", image_id, error.explanation or error)


def _image_labels(recipe: Recipe, recipe_hash: str) -> dict[str, str]:
    return {labels.STAND_IN: "true", labels.RECIPE_HASH: recipe_hash, labels.UPSTREAM: ",".join(recipe.tags)}


def _build(client: docker.DockerClient, recipe: Recipe, recipe_hash: str) -> str:
    """Build the image of ``recipe`` in the engine and return its id (tagged with the first tag)."""
    if recipe.uses_debootstrap:
        return _import_rootfs(client, recipe, recipe_hash)

    with tempfile.TemporaryDirectory(prefix="dind-dood-harness-build-") as context:
        shutil.copytree(recipe.directory, context, symlinks=True, dirs_exist_ok=True)
        for name, source in recipe.copies.items():
            if source.is_dir():
                shutil.copytree(source, Path(context) / name, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(source, Path(context) / name)
        stream = client.api.build(path=context, tag=recipe.tags[0], buildargs=recipe.args or None,
                                  target=recipe.target, labels=_image_labels(recipe, recipe_hash),
                                  rm=True, forcerm=True, pull=False, decode=True, timeout=None,
                                  extra_hosts=_package_mirror_hosts())
        _follow_build(recipe, stream)
    return client.api.inspect_image(recipe.tags[0])["Id"]


def _package_mirror_hosts() -> dict[str, str]:
    """Return ``{name: address}`` of Debian's mirror, resolved on the host, for build containers.

    Containers on a harness-started engine get a DNS server that resolves nothing (see
    ``harness.engine.local_dns_address``), so RUN steps find the mirror through /etc/hosts only.
    """
    hosts = {}
    for name in PACKAGE_MIRRORS:
        try:
            hosts[name] = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        except OSError as error:
            log.warning("cannot resolve %s on this machine (%s); builds that install packages will fail",
                        name, error)
    return hosts


def _follow_build(recipe: Recipe, stream: Iterable[dict]) -> None:
    """Log the build output (steps at INFO, the rest at DEBUG) and raise on a build error."""
    tail: collections.deque[str] = collections.deque(maxlen=15)
    for chunk in stream:
        if "error" in chunk:
            raise ImageError(f"building {recipe.tags[0]} from {recipe.directory} failed: "
                             f"{chunk['error'].strip()}\n" + "\n".join(tail))
        for line in _ANSI_ESCAPE.sub("", chunk.get("stream", "")).splitlines():
            if not line.strip():
                continue
            tail.append(line)
            log.log(logging.INFO if line.startswith("Step ") else logging.DEBUG, "%s: %s", recipe.name, line)


def _import_rootfs(client: docker.DockerClient, recipe: Recipe, recipe_hash: str) -> str:
    """Import the debootstrap root filesystem of ``recipe`` as an image with the stand-in labels."""
    archive = _cached_rootfs(recipe)
    changes = [f'LABEL {key}="{value}"' for key, value in _image_labels(recipe, recipe_hash).items()]
    changes += ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["bash"]']
    repository, tag = split_tag(recipe.tags[0])
    log.info("importing %s as %s", archive, recipe.tags[0])
    client.api.import_image(src=str(archive), repository=repository, tag=tag, changes=changes)
    return client.api.inspect_image(recipe.tags[0])["Id"]


def _cached_rootfs(recipe: Recipe) -> Path:
    """Return the root filesystem archive of ``recipe``, running debootstrap only on a cache miss.

    The cache key leaves out the tags, so a copy of the recipe under another tag reuses the archive.
    """
    cache_dir = state_dir() / "images"
    archive = cache_dir / f"{recipe.name}-rootfs-{content_hash(recipe)[:16]}.tar"
    if archive.is_file():
        log.info("using cached root filesystem %s", archive)
        return archive

    if os.geteuid() != 0:
        raise ImageError(f"building {recipe.tags[0]} runs debootstrap, which needs root; run the build as root")

    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("running debootstrap for %s (takes about 30 s)", recipe.tags[0])
    command = ["sh", str(recipe.recipe_file), str(archive), *(recipe.args[key] for key in ROOTFS_ARGS)]
    _run_logged(command, recipe.name)

    for old in cache_dir.glob(f"{recipe.name}-rootfs-*.tar"):
        if old != archive:
            log.debug("removing outdated root filesystem %s", old)
            old.unlink()
    return archive


def _run_logged(command: list[str], name: str) -> None:
    """Run ``command``, logging its output at DEBUG; raise ImageError with the last lines on failure."""
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            tail.append(line.rstrip())
            log.debug("%s: %s", name, line.rstrip())
    if process.returncode != 0:
        raise ImageError(f"{' '.join(command[:2])} failed with exit status {process.returncode}:\n"
                         + "\n".join(tail))


def _pull_images(client: docker.DockerClient, selected: list[Recipe]) -> ForgeReport:
    """Pull the upstream images of ``selected`` (internal harness images have no upstream)."""
    report = ForgeReport()
    for recipe in selected:
        for tag in recipe.tags:
            if tag.startswith(INTERNAL_PREFIX):
                continue
            started = time.monotonic()
            log.info("pulling %s", tag)
            repository, name = split_tag(tag)
            try:
                client.api.pull(repository, tag=name)
            except docker.errors.APIError as error:
                reason = str(error.explanation or error).strip().splitlines()[0]
                raise ImageError(f"pulling {tag} failed: {reason}; this machine may have no registry access, "
                                 "so build the stand-ins instead (harness images build, without --pull)") from None
            report.results.append(ImageResult(recipe.name, (tag,), "pulled", time.monotonic() - started))
    return report


def list_images(client: docker.DockerClient, catalog_path: Path = CATALOG) -> list[ImageRow]:
    """Return one row per catalog tag: present, stand-in or not, recipe changed or not, engine version."""
    catalog = load_catalog(catalog_path)
    hashes = recipe_hashes(client, catalog)
    versions = EngineVersions(client)
    rows = []
    for recipe in catalog.values():
        for tag in recipe.tags:
            info = _inspect(client, tag)
            image_labels = _labels_of(info)
            stand_in = image_labels.get(labels.STAND_IN) == "true"
            changed = image_labels.get(labels.RECIPE_HASH) != hashes[recipe.name] if stand_in else None
            version = versions.of(tag, info["Id"]) if info else ""
            rows.append(ImageRow(tag, recipe.name, info is not None, stand_in, changed,
                                 info["Id"] if info else None, info["Size"] if info else None,
                                 version, recipe.on_demand))
    versions.save()
    return rows


def format_size(size: int | None) -> str:
    """Return ``size`` in bytes as megabytes (10^6 bytes, as ``docker images`` counts)."""
    return "-" if size is None else f"{size / 1e6:.1f} MB"


def render_image_table(rows: list[ImageRow]) -> str:
    """Format ``rows`` as an aligned text table with a header line."""
    def word(value: bool | None) -> str:
        if value is None:
            return "-"
        return "yes" if value else "no"

    def presence(row: ImageRow) -> str:
        return "on demand" if row.on_demand and not row.present else word(row.present)

    table = [("TAG", "RECIPE", "PRESENT", "STAND-IN", "RECIPE CHANGED", "ENGINE", "SIZE")]
    for row in rows:
        table.append((row.tag, row.recipe, presence(row), word(row.stand_in if row.present else None),
                      word(row.recipe_changed), row.engine_version or "-", format_size(row.size)))
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m harness.images build [NAME...]`` or ``list``; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m harness.images", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "list"])
    parser.add_argument("names", nargs="*", help="recipes or tags to build (default: all)")
    parser.add_argument("--pull", action="store_true", help="pull the real upstream images instead of building")
    parser.add_argument("-v", "--verbose", action="store_true", help="also log build output (DEBUG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")

    from harness.engine import require_engine

    try:
        client = require_engine()
        if args.action == "build":
            ensure_images(client, names=args.names or None, pull=args.pull)
        print(render_image_table(list_images(client)))
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
