"""The project a pipeline runs for: a real git repository with a real commit on one branch.

The ``CI_COMMIT_*`` variables and the clone the runner makes both come from this commit, so a job
gets the same sha, title and author it would get on GitLab.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import HarnessError, InputError

log = logging.getLogger(__name__)

AUTHOR_NAME = "Harness"
AUTHOR_EMAIL = "harness@localhost"
ZERO_SHA = "0" * 40
DEFAULT_COMMIT_MESSAGE = "Import project for the harness pipeline"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Project:
    """A GitLab project as the compiler needs it, backed by a git repository on disk.

    ``commit_timestamp`` is ISO 8601 with offset, ``commit_author`` is ``Name <email>``, and
    ``before_sha`` is the parent commit, or 40 zeros for a branch's first commit as on a first push.
    """

    namespace: str
    name: str
    id: int
    default_branch: str
    repo_dir: Path
    ref: str
    sha: str
    before_sha: str
    commit_title: str
    commit_message: str
    commit_author: str
    commit_timestamp: str

    @property
    def path(self) -> str:
        """The project path, ``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def root_namespace(self) -> str:
        """The top-level group of a nested namespace such as ``group/subgroup``."""
        return self.namespace.split("/")[0]

    @property
    def commit_description(self) -> str:
        """The commit message without its title line, as ``CI_COMMIT_DESCRIPTION`` carries it."""
        _, _, rest = self.commit_message.partition("\n")
        return rest.strip("\n")

    @classmethod
    def from_directory(
        cls,
        source_dir: str | Path,
        namespace: str,
        name: str,
        branch: str = "master",
        project_id: int = 1,
        work_dir: str | Path | None = None,
        message: str = DEFAULT_COMMIT_MESSAGE,
    ) -> Project:
        """Create the project from a folder, committing its files with ``git``.

        A plain folder is copied into a new repository under ``work_dir`` (a new temporary
        directory when None) and committed on ``branch`` as ``Harness <harness@localhost>``.
        A folder that is already the top of a git repository with ``branch`` is read, never
        written. Nothing here talks to a Docker daemon.

        Raises:
            InputError: the folder is missing, a name is invalid, or the repository lacks ``branch``.
            HarnessError: ``git`` is not installed or a git command failed.
        """
        source = Path(source_dir)
        _check_names(source, namespace, name, branch)

        if _is_repository_top(source):
            repo_dir = source
            if not _branch_exists(repo_dir, branch):
                raise InputError(
                    str(source), "branch", f'git repository has no branch "{branch}"',
                    f"check it out with `git -C {source} branch {branch}` or pass an existing branch",
                )
            log.info("Using git repository %s at branch %s", repo_dir, branch)
        else:
            repo_dir = _commit_copy(source, branch, name, work_dir, message)

        return _read_project(repo_dir, namespace, name, project_id, branch, branch)

    def for_branch(self, branch: str) -> Project:
        """Return the same project at another existing branch of its repository.

        Raises:
            InputError: the repository has no such branch.
        """
        if not _branch_exists(self.repo_dir, branch):
            raise InputError(
                str(self.repo_dir), "branch", f'git repository has no branch "{branch}"',
                f"create the project with branch={branch!r} or pick an existing branch",
            )
        return _read_project(self.repo_dir, self.namespace, self.name, self.id, branch,
                             self.default_branch)

    def list_files(self) -> list[str]:
        """Return the repository-relative paths of the files in the commit ``sha``."""
        output = git(self.repo_dir, "ls-tree", "-r", "--name-only", "-z", self.sha)
        return [path for path in output.split("\0") if path]

    def changed_files(self) -> list[str] | None:
        """Return the paths changed between ``before_sha`` and ``sha``; None for a first commit."""
        if self.before_sha == ZERO_SHA:
            return None
        output = git(self.repo_dir, "diff", "--name-only", "-z", self.before_sha, self.sha)
        return [path for path in output.split("\0") if path]

    def with_default_branch(self, branch: str) -> Project:
        """Return a copy whose ``default_branch`` is ``branch`` (``CI_DEFAULT_BRANCH``)."""
        return replace(self, default_branch=branch)


def git(repo_dir: Path, *args: str) -> str:
    """Run ``git`` in ``repo_dir`` with a fixed environment and return its stdout.

    Global and system git configuration are ignored so that a user's hooks, signing or
    ``init.defaultBranch`` cannot change the commit.

    Raises:
        HarnessError: git is missing or exits non-zero; the message carries git's stderr.
    """
    command = ["git", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args]
    try:
        result = subprocess.run(
            command, cwd=repo_dir, env=_git_environment(), capture_output=True, text=True,
            check=False,
        )
    except FileNotFoundError as error:
        raise HarnessError("git is not installed; install git (Debian: apt-get install git)") from error

    if result.returncode != 0:
        raise HarnessError(f"`{' '.join(command)}` failed in {repo_dir}: {result.stderr.strip()}")
    return result.stdout


def _git_environment() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
    }


def _check_names(source: Path, namespace: str, name: str, branch: str) -> None:
    if not source.is_dir():
        raise InputError(str(source), "", "project directory not found",
                         "pass the folder that contains .gitlab-ci.yml")

    parts = namespace.split("/")
    for key, values in (("namespace", parts), ("name", [name])):
        for value in values:
            if not _NAME_PATTERN.fullmatch(value):
                raise InputError(str(source), key, f"invalid project {key} {value!r}",
                                 "use letters, digits, '_', '-' and '.', starting with a letter or digit")

    if not branch or branch.startswith("-") or any(c in branch for c in " ~^:?*[\\"):
        raise InputError(str(source), "branch", f"invalid branch name {branch!r}",
                         "use a plain git branch name such as master or main")


def _is_repository_top(directory: Path) -> bool:
    if not (directory / ".git").exists():
        return False
    top = git(directory, "rev-parse", "--show-toplevel").strip()
    return Path(top).resolve() == directory.resolve()


def _branch_exists(repo_dir: Path, branch: str) -> bool:
    try:
        git(repo_dir, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
    except HarnessError:
        return False
    return True


def _commit_copy(source: Path, branch: str, name: str, work_dir: str | Path | None,
                 message: str) -> Path:
    """Copy ``source`` without any ``.git`` into a new repository and commit everything."""
    parent = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="harness-project-"))
    parent.mkdir(parents=True, exist_ok=True)
    repo_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    shutil.copytree(source, repo_dir, ignore=shutil.ignore_patterns(".git"), symlinks=True,
                    dirs_exist_ok=True)

    git(repo_dir, "init", "--quiet", f"--initial-branch={branch}")
    git(repo_dir, "add", "--all")
    git(repo_dir, "commit", "--quiet", "--allow-empty", "--no-verify", "-m", message)
    log.info("Committed %s into a new git repository %s on branch %s", source, repo_dir, branch)
    return repo_dir


def _read_project(repo_dir: Path, namespace: str, name: str, project_id: int, branch: str,
                  default_branch: str) -> Project:
    fields = git(repo_dir, "log", "-1", "--format=%H%x00%P%x00%an <%ae>%x00%aI%x00%B",
                 f"refs/heads/{branch}").split("\0")
    sha, parents, author, timestamp, body = fields
    message = body.rstrip("\n")
    parent_list = parents.split()

    return Project(
        namespace=namespace,
        name=name,
        id=int(project_id),
        default_branch=default_branch,
        repo_dir=repo_dir,
        ref=branch,
        sha=sha,
        before_sha=parent_list[0] if parent_list else ZERO_SHA,
        commit_title=message.split("\n", 1)[0],
        commit_message=message,
        commit_author=author,
        commit_timestamp=timestamp,
    )
