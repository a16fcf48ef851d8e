"""Which stand-ins a DinD run's mirror preloads (pure text matching, no engine)."""

from pathlib import Path

import pytest

from harness.mirror_images import named_references, run_texts

CANDIDATES = ("busybox:latest", "node:18", "alpine:3", "httpd:latest")


@pytest.mark.parametrize(("text", "expected"), [
    ("FROM node:18\n", ["node:18"]),
    ("  - docker run --rm busybox true", ["busybox:latest"]),
    ("docker pull docker.io/library/httpd", ["httpd:latest"]),
    ("docker run alpine:3 sh -c 'echo'", ["alpine:3"]),
    ("image: docker:stable", []),
    ("FROM node:20", []),
    ("node server.js", []),
    ("docker pull myorg/busybox", []),
    ("docker pull busybox:1.36", []),
    ("FROM scratch\nCOPY hello.txt /", []),
])
def test_named_references_cases(text, expected):
    assert named_references([text], CANDIDATES) == expected


def test_named_references_keeps_candidate_order():
    texts = ["docker run httpd", "FROM node:18"]
    assert named_references(texts, CANDIDATES) == ["node:18", "httpd:latest"]


def test_run_texts_reads_pipeline_project_and_values(tmp_path: Path):
    pipeline = tmp_path / ".gitlab-ci.yml"
    pipeline.write_text("job:\n  script: [docker run busybox true]\n")
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "config").write_text("FROM httpd")
    (project / "Dockerfile").write_text("FROM node:18\n")
    (project / "big.bin").write_bytes(b"alpine:3 " + b"x" * 1_000_001)

    found = named_references(run_texts(pipeline, project, ["alpine:3-not", "value"]), CANDIDATES)

    # .git is not the project's content, and big.bin is over the scanned size.
    assert found == ["busybox:latest", "node:18"]
