"""``get_sources``: the project's git repository checked out at the job's sha in the builds volume.

The repository comes from a local directory, not from a git server: its ``.git`` directory is
copied as a tar archive into the predefined container before the container first starts, and the
stage script fetches from that copy. Copying through the Engine API works the same whether the
executor runs on the host or inside the runner container, where host paths are not visible.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from pathlib import Path

from harness.errors import InputError
from harness.executor.script import quote

# Inside the predefined container; outside every volume so it never reaches the job.
SOURCE_MOUNT = "/var/lib/harness-source"
SOURCE_REPOSITORY = f"{SOURCE_MOUNT}/repository.git"


def git_directory(sources: Path) -> Path:
    """Return the git directory of ``sources`` (a work tree or a bare repository).

    Raises:
        InputError: ``sources`` is not a git repository.
    """
    sources = Path(sources)
    if (sources / ".git").is_dir():
        return sources / ".git"
    if (sources / "HEAD").is_file() and (sources / "objects").is_dir():
        return sources
    raise InputError(str(sources), "", "the directory is not a git repository",
                     "pass the project's work tree or bare repository as --sources")


def repository_archive(sources: Path) -> bytes:
    """Return a tar archive of the git directory of ``sources``, rooted at ``repository.git``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(str(git_directory(sources)), arcname="repository.git")
    return buffer.getvalue()


def git_strategy(payload: Mapping, variables_get) -> str:
    """Return ``clone``, ``fetch`` or ``none``: ``GIT_STRATEGY`` wins, else ``allow_git_fetch``."""
    strategy = variables_get("GIT_STRATEGY")
    if strategy in ("clone", "fetch", "none", "empty"):
        return "none" if strategy == "empty" else strategy
    return "fetch" if payload.get("allow_git_fetch") else "clone"


def get_sources_body(project_dir: str, strategy: str, git_info: Mapping, exports: list[str]) -> str:
    """Return the ``get_sources`` stage body for the predefined container."""
    lines = list(exports)
    lines.append("umask 0000")
    if strategy == "none":
        lines.append(f"mkdir -p {quote(project_dir)}")
        lines.append("echo 'Skipping Git repository setup'")
        return "\n".join(lines) + "\n"

    sha = git_info.get("sha", "")
    ref = git_info.get("ref", "")
    directory = quote(project_dir)
    if strategy == "clone":
        lines.append(f"rm -rf {directory}")
    lines.append("echo 'Fetching changes...'")
    lines.append(f"mkdir -p {directory}")
    lines.append(f"cd {directory}")
    lines.append("if [ -d .git ]; then echo 'Reinitialized existing Git repository'; "
                 "else git init --quiet && echo \"Initialized empty Git repository in $PWD/.git/\"; "
                 "echo 'Created fresh repository.'; fi")
    lines.append("git remote remove origin 2>/dev/null || true")
    lines.append(f"git remote add origin {quote(git_info.get('repo_url', ''))}")
    lines.append(f"git fetch --quiet --force --tags {quote(SOURCE_REPOSITORY)} "
                 "'+refs/heads/*:refs/remotes/origin/*'")
    lines.append(f"echo {quote(f'Checking out {sha[:8]} as detached HEAD (ref is {ref})...')}")
    lines.append(f"git -c advice.detachedHead=false checkout --force --quiet {quote(sha)}")
    lines.append("git clean -ffdx --quiet")
    lines.append("echo 'Skipping Git submodules setup'")
    return "\n".join(lines) + "\n"
