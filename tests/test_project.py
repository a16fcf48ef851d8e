"""Project checkout: real git repositories and commits, no Docker engine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.errors import HarnessError, InputError
from harness.project import ZERO_SHA, Project, git


def run_git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    base = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.invalid",
            "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.invalid",
            "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(["git", *args], cwd=repo, env={**base, **(env or {})},
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    (folder / "sub").mkdir(parents=True)
    (folder / ".gitlab-ci.yml").write_text("build:\n  script: [make]\n")
    (folder / "sub" / "Dockerfile").write_text("FROM scratch\n")
    return folder


@pytest.fixture
def existing_repo(tmp_path: Path) -> Path:
    """A user's repository with two commits on main and a second branch."""
    repo = tmp_path / "existing"
    repo.mkdir()
    run_git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "a.txt").write_text("one\n")
    run_git(repo, "add", "a.txt")
    run_git(repo, "commit", "--quiet", "-m", "First")
    (repo / "b.txt").write_text("two\n")
    run_git(repo, "add", "b.txt")
    run_git(repo, "commit", "--quiet", "-m", "Second title\n\nBody line")
    run_git(repo, "branch", "feature/x", "HEAD~1")
    return repo


def test_plain_folder_gets_real_commit(source: Path, tmp_path: Path) -> None:
    project = Project.from_directory(source, "group", "demo", branch="master", project_id=42,
                                     work_dir=tmp_path / "work")

    assert re.fullmatch(r"[0-9a-f]{40}", project.sha)
    assert project.sha == run_git(project.repo_dir, "rev-parse", "HEAD")
    assert run_git(project.repo_dir, "symbolic-ref", "--short", "HEAD") == "master"
    assert run_git(project.repo_dir, "log", "-1", "--format=%an <%ae>|%cn <%ce>") == (
        "Harness <harness@localhost>|Harness <harness@localhost>")
    assert project.commit_author == "Harness <harness@localhost>"
    assert project.before_sha == ZERO_SHA
    assert project.ref == "master"
    assert project.default_branch == "master"
    assert project.id == 42
    assert project.path == "group/demo"


def test_plain_folder_copy_leaves_source_alone(source: Path, tmp_path: Path) -> None:
    project = Project.from_directory(source, "group", "demo", work_dir=tmp_path / "work")

    assert not (source / ".git").exists()
    assert project.repo_dir != source
    assert project.repo_dir.is_relative_to(tmp_path / "work")
    assert (project.repo_dir / "sub" / "Dockerfile").read_text() == "FROM scratch\n"


def test_commit_fields_come_from_git(source: Path, tmp_path: Path) -> None:
    project = Project.from_directory(source, "group", "demo", work_dir=tmp_path / "work",
                                     message="Build images\n\nWith details")

    assert project.commit_title == "Build images"
    assert project.commit_message == "Build images\n\nWith details"
    assert project.commit_description == "With details"
    assert project.commit_timestamp == run_git(project.repo_dir, "log", "-1", "--format=%aI")


def test_default_work_dir_is_temporary(source: Path) -> None:
    project = Project.from_directory(source, "group", "demo")
    try:
        assert project.repo_dir.exists()
        assert project.repo_dir.parent.name.startswith("harness-project-")
    finally:
        shutil.rmtree(project.repo_dir.parent)


def test_user_git_config_is_ignored(source: Path, tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n  name = Someone Else\n  email = else@example.invalid\n"
                                     "[commit]\n  gpgsign = true\n[init]\n  defaultBranch = trunk\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Leaked Author")

    project = Project.from_directory(source, "group", "demo", branch="master",
                                     work_dir=tmp_path / "work")

    assert project.commit_author == "Harness <harness@localhost>"
    assert project.ref == "master"


def test_nested_folder_of_repo_is_copied(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    (outer / "project").mkdir(parents=True)
    run_git(outer, "init", "--quiet", "--initial-branch=main")
    (outer / "project" / "file.txt").write_text("x\n")

    project = Project.from_directory(outer / "project", "group", "demo", work_dir=tmp_path / "work")

    assert project.repo_dir != outer / "project"
    assert project.list_files() == ["file.txt"]
    assert run_git(outer, "status", "--porcelain") == "?? project/"


def test_existing_repository_is_used_directly(existing_repo: Path) -> None:
    head_before = run_git(existing_repo, "rev-parse", "HEAD")

    project = Project.from_directory(existing_repo, "group", "demo", branch="main")

    assert project.repo_dir == existing_repo
    assert project.sha == head_before
    assert project.before_sha == run_git(existing_repo, "rev-parse", "HEAD~1")
    assert project.commit_title == "Second title"
    assert project.commit_description == "Body line"
    assert project.commit_author == "Dev <dev@example.invalid>"
    assert run_git(existing_repo, "rev-parse", "HEAD") == head_before


def test_existing_repository_without_branch(existing_repo: Path) -> None:
    with pytest.raises(InputError) as raised:
        Project.from_directory(existing_repo, "group", "demo", branch="master")

    message = str(raised.value)
    assert message.startswith(f"{existing_repo}: branch: ")
    assert 'no branch "master"' in message
    assert "git -C" in message


def test_for_branch_reads_other_branch(existing_repo: Path) -> None:
    project = Project.from_directory(existing_repo, "group", "demo", branch="main")

    feature = project.for_branch("feature/x")

    assert feature.ref == "feature/x"
    assert feature.sha == run_git(existing_repo, "rev-parse", "feature/x")
    assert feature.before_sha == ZERO_SHA
    assert feature.default_branch == "main"
    assert feature.commit_title == "First"


def test_for_branch_missing(existing_repo: Path) -> None:
    project = Project.from_directory(existing_repo, "group", "demo", branch="main")

    with pytest.raises(InputError, match="no branch \"nope\""):
        project.for_branch("nope")


def test_list_files_of_commit(source: Path, tmp_path: Path) -> None:
    project = Project.from_directory(source, "group", "demo", work_dir=tmp_path / "work")
    (project.repo_dir / "untracked.txt").write_text("not committed\n")

    assert sorted(project.list_files()) == [".gitlab-ci.yml", "sub/Dockerfile"]


def test_changed_files(existing_repo: Path, source: Path, tmp_path: Path) -> None:
    second = Project.from_directory(existing_repo, "group", "demo", branch="main")
    first_push = Project.from_directory(source, "group", "demo", work_dir=tmp_path / "work")

    assert second.changed_files() == ["b.txt"]
    assert first_push.changed_files() is None


def test_nested_namespace(source: Path, tmp_path: Path) -> None:
    project = Project.from_directory(source, "group/sub", "demo", work_dir=tmp_path / "work")

    assert project.path == "group/sub/demo"
    assert project.root_namespace == "group"


def test_with_default_branch(source: Path, tmp_path: Path) -> None:
    project = Project.from_directory(source, "group", "demo", branch="feature",
                                     work_dir=tmp_path / "work")

    assert project.with_default_branch("main").default_branch == "main"
    assert project.default_branch == "feature"


@pytest.mark.parametrize(
    ("namespace", "name", "branch", "key"),
    [
        ("group", "bad name", "master", "name"),
        ("gr oup", "demo", "master", "namespace"),
        ("group//sub", "demo", "master", "namespace"),
        ("group", "demo", "", "branch"),
        ("group", "demo", "-x", "branch"),
        ("group", "demo", "a b", "branch"),
        ("group", "demo", "a:b", "branch"),
    ],
)
def test_invalid_names(source: Path, namespace: str, name: str, branch: str, key: str) -> None:
    with pytest.raises(InputError) as raised:
        Project.from_directory(source, namespace, name, branch=branch)

    assert str(raised.value).startswith(f"{source}: {key}: invalid ")
    assert "; " in str(raised.value)


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing"

    with pytest.raises(InputError) as raised:
        Project.from_directory(missing, "group", "demo")

    assert str(raised.value) == (f"{missing}: project directory not found; "
                                 "pass the folder that contains .gitlab-ci.yml")


def test_git_failure_carries_stderr(tmp_path: Path) -> None:
    with pytest.raises(HarnessError) as raised:
        git(tmp_path, "rev-parse", "HEAD")

    assert "not a git repository" in str(raised.value)
    assert str(tmp_path) in str(raised.value)
