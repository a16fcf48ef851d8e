"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.coordinator import Coordinator, ProjectInfo
from harness.coordinator_jobs import PipelineQueue
from harness.pipeline import CompiledPipeline, compile_pipeline, load_pipeline
from harness.project import Project
from harness.variables import Variable


@dataclass
class ServedPipeline:
    """A started coordinator that serves one compiled pipeline of a one-commit project."""

    coordinator: Coordinator
    project: Project
    compiled: CompiledPipeline
    queue: PipelineQueue


@pytest.fixture
def serve_pipeline(tmp_path: Path) -> Iterator[Callable[..., ServedPipeline]]:
    """Return a function that starts a coordinator serving ``pipeline`` on ``127.0.0.1``.

    The function writes ``pipeline`` as ``.gitlab-ci.yml`` with ``files`` beside it into a new
    project ``group/NAME``, compiles it with ``variables`` and job ids from ``pipeline_id * 1000 + 1``,
    and queues it. The pipeline is not created yet: that is the caller's step, as a runner
    test may need to see the coordinator before it. Every coordinator is closed at teardown.
    """
    started: list[Coordinator] = []

    def serve(pipeline: str, *, name: str = "proj", files: dict[str, str] | None = None,
              variables: tuple[Variable, ...] = (), pipeline_id: int = 91) -> ServedPipeline:
        source = tmp_path / f"source-{name}"
        source.mkdir()
        (source / ".gitlab-ci.yml").write_text(pipeline)
        for file_name, text in (files or {}).items():
            (source / file_name).write_text(text)
        project = Project.from_directory(source, "group", name, branch="main", work_dir=tmp_path / f"work-{name}")

        coordinator = Coordinator(ProjectInfo(project.id, project.path, "main", project.repo_dir)).start()
        started.append(coordinator)
        compiled = compile_pipeline(load_pipeline(source / ".gitlab-ci.yml"), project, server_url=coordinator.url,
                                    variables=list(variables), pipeline_id=pipeline_id,
                                    first_job_id=pipeline_id * 1000 + 1)
        queue = PipelineQueue(pipeline_id, compiled.stages, compiled.jobs)
        coordinator.serve(queue)
        return ServedPipeline(coordinator, project, compiled, queue)

    yield serve

    for coordinator in started:
        coordinator.close()
