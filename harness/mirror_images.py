"""Which stand-ins a DinD run's pull mirror must hold: the Docker Hub images its files name.

Pushing an image to the mirror costs time in proportion to its bytes. node:18 alone is 300 MB,
about 15 s on two cores (measured with `harness run` under pyinstrument). A run therefore pushes
only the images its pipeline, project files and variables mention, not every stand-in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

# Files above this size are build inputs (archives, binaries), not places that name images.
MAX_SCANNED_BYTES = 1_000_000


def reference_pattern(reference: str) -> re.Pattern[str]:
    """Return a pattern matching ``reference`` as a file or script would write it.

    ``busybox:latest`` also matches a bare ``busybox`` (Docker's default tag) and
    ``docker.io/library/busybox``. A name followed by a different tag does not match.
    """
    name, _, tag = reference.rpartition(":") if ":" in reference else (reference, "", "latest")
    # The lookbehind rejects names that are the tail of another path (myorg/busybox).
    prefix = r"(?<![\w./-])(?:(?:docker\.io/|index\.docker\.io/)?(?:library/)?)"
    tag_part = rf"(?::{re.escape(tag)})" + ("?" if tag == "latest" else "")
    return re.compile(prefix + re.escape(name) + tag_part + r"(?![\w.:-])")


def named_references(texts: Iterable[str], candidates: Iterable[str]) -> list[str]:
    """Return the ``candidates`` that any of ``texts`` names, in the order of ``candidates``."""
    corpus = list(texts)
    return [reference for reference in candidates
            if any(reference_pattern(reference).search(text) for text in corpus)]


def run_texts(pipeline: Path, project_dir: Path, values: Iterable[str]) -> Iterator[str]:
    """Yield the pipeline file, every small text file of the project and the variable values.

    NOTE: an image name that a job assembles at run time is not found, such as
    ``docker pull "$BASE:$TAG"`` with both parts set in a script. Such a run must name the image
    in a variable value or a file. Otherwise the pull inside DinD fails with "not found".
    """
    yield _read_text(pipeline)
    yield from values
    for path in sorted(project_dir.rglob("*")):
        if ".git" in path.relative_to(project_dir).parts or not path.is_file():
            continue
        if path.stat().st_size <= MAX_SCANNED_BYTES:
            yield _read_text(path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
