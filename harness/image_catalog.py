"""Recipe catalog of the image forge: ``docker/images.toml`` parsed, ordered and hashed.

Engine-free: harness.images uses it to decide what to build, and tests can read it without Docker.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import InputError

# NOTE: recipes are read from the source checkout; an installed wheel does not ship docker/.
REPO_ROOT = Path(__file__).resolve().parent.parent
CATALOG = REPO_ROOT / "docker" / "images.toml"
ROOTFS_SCRIPT = "build-rootfs.sh"
ROOTFS_ARGS = ("SUITE", "VARIANT", "MIRROR", "SECURITY_MIRROR")
SPECIAL_SOURCES = ("scratch", "debootstrap")
# Part of every recipe hash: bump it when hashing or labelling changes, so older builds count as stale.
HASH_SCHEME = "1"
_FROM_LINE = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Recipe:
    """One table of the catalog: how to build the images with ``tags``."""

    name: str
    directory: Path
    tags: tuple[str, ...]
    purpose: str
    sources: tuple[str, ...]
    args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    copies: dict[str, Path] = field(default_factory=dict)
    optional: bool = False
    on_demand: bool = False

    @property
    def uses_debootstrap(self) -> bool:
        """True when the image is imported from a debootstrap root filesystem, not built from a Dockerfile."""
        return "debootstrap" in self.sources

    @property
    def recipe_file(self) -> Path:
        """The Dockerfile, or the root filesystem script of a debootstrap recipe."""
        return self.directory / (ROOTFS_SCRIPT if self.uses_debootstrap else "Dockerfile")


def normalize_tag(reference: str) -> str:
    """Return ``reference`` with the implicit ``:latest`` tag written out."""
    last_part = reference.rsplit("/", 1)[-1]
    return reference if ":" in last_part or "@" in last_part else f"{reference}:latest"


def split_tag(reference: str) -> tuple[str, str]:
    """Split ``reference`` into repository and tag, as ``docker tag`` takes them."""
    repository, _, tag = normalize_tag(reference).rpartition(":")
    return repository, tag


def load_catalog(path: Path = CATALOG) -> dict[str, Recipe]:
    """Read and check the recipe catalog at ``path``; recipe directories are relative to it.

    Raises:
        InputError: a recipe has a missing or invalid key, an unknown ``from`` entry, or a cycle.
    """
    try:
        tables = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise InputError(str(path), "", f"cannot read the recipe catalog: {error}", "fix the file") from None

    catalog = {name: _parse_recipe(path, name, table) for name, table in tables.items()}
    for recipe in catalog.values():
        for source in recipe.sources:
            if source not in catalog and source not in SPECIAL_SOURCES and not re.search(r"[:/]", source):
                raise InputError(str(path), f"{recipe.name}.from", f"unknown recipe {source!r}",
                                 f"use a recipe name, {' or '.join(SPECIAL_SOURCES)}, or an image reference")
    build_order(catalog, catalog.values(), path)
    return catalog


def _parse_recipe(path: Path, name: str, table: dict) -> Recipe:
    def require(key: str, kind: type, default=None):
        value = table.get(key, default)
        if value is None or not isinstance(value, kind):
            raise InputError(str(path), f"{name}.{key}", f"missing or not a {kind.__name__}",
                             f"set {key} as the header comment of the catalog describes")
        return value

    tags = require("tags", list)
    copies = require("copy", dict, {})
    if not tags or not all(isinstance(tag, str) for tag in tags):
        raise InputError(str(path), f"{name}.tags", "must be a non-empty list of image tags",
                         'write for example tags = ["busybox:latest"]')
    sources = require("from", list)
    args = {key: str(value) for key, value in require("args", dict, {}).items()}
    missing = [key for key in ROOTFS_ARGS if key not in args]
    if "debootstrap" in sources and missing:
        raise InputError(str(path), f"{name}.args", f"missing {', '.join(missing)}",
                         f"set args {', '.join(ROOTFS_ARGS)}, which debootstrap needs")
    return Recipe(
        name=name,
        directory=Path(path).parent / require("dir", str),
        tags=tuple(normalize_tag(tag) for tag in tags),
        purpose=require("purpose", str),
        sources=tuple(str(source) for source in sources),
        args=args,
        target=table.get("target"),
        copies={target: REPO_ROOT / source for target, source in copies.items()},
        optional=bool(table.get("optional", False)),
        on_demand=bool(table.get("on_demand", False)),
    )


def dependencies(recipe: Recipe, catalog: dict[str, Recipe]) -> list[str]:
    """Return the recipes ``recipe`` needs: its ``from`` entries and the producers of its FROM images."""
    names = [source for source in recipe.sources if source in catalog]
    producers = {tag: other.name for other in catalog.values() for tag in other.tags}
    if recipe.recipe_file.is_file() and not recipe.uses_debootstrap:
        stages = set()
        for image, stage in _FROM_LINE.findall(recipe.recipe_file.read_text()):
            producer = producers.get(normalize_tag(image)) if image not in stages else None
            if producer and producer not in names and producer != recipe.name:
                names.append(producer)
            if stage:
                stages.add(stage)
    return names


def build_order(catalog: dict[str, Recipe], selected: Iterable[Recipe], path: Path = CATALOG) -> list[Recipe]:
    """Return ``selected`` and everything they depend on, each recipe after its dependencies."""
    order: list[Recipe] = []
    visiting: set[str] = set()

    def visit(recipe: Recipe) -> None:
        if recipe in order:
            return
        if recipe.name in visiting:
            raise InputError(str(path), f"{recipe.name}.from", "the recipes depend on each other in a cycle",
                             "remove one of the from entries")
        visiting.add(recipe.name)
        for dependency in dependencies(recipe, catalog):
            visit(catalog[dependency])
        visiting.discard(recipe.name)
        order.append(recipe)

    for recipe in selected:
        visit(recipe)
    return order


def _hash_tree(digest, path: Path, prefix: str) -> None:
    """Feed names, executable bits, symlink targets and contents under ``path`` into ``digest``."""
    if not path.exists():
        digest.update(f"missing {prefix}\n".encode())
        return
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if not p.is_dir() or p.is_symlink())
    for file in files:
        if "__pycache__" in file.parts or file.suffix == ".pyc":
            continue
        name = f"{prefix}/{file.relative_to(path)}" if file != path else prefix
        if file.is_symlink():
            digest.update(f"link {name} {os.readlink(file)}\n".encode())
            continue
        executable = bool(file.stat().st_mode & 0o111)
        digest.update(f"file {name} {executable} {file.stat().st_size}\n".encode())
        digest.update(file.read_bytes())


def content_hash(recipe: Recipe) -> str:
    """Hash what the build output depends on apart from parents and tags: files, args, target."""
    digest = hashlib.sha256(f"scheme {HASH_SCHEME}\n".encode())
    _hash_tree(digest, recipe.directory, "recipe")
    for name, source in sorted(recipe.copies.items()):
        _hash_tree(digest, source, f"copy/{name}")
    for key, value in sorted(recipe.args.items()):
        digest.update(f"arg {key}={value}\n".encode())
    digest.update(f"target {recipe.target}\n".encode())
    return digest.hexdigest()
