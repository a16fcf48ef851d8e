"""Snapshots and cleanup on an engine that other sessions change at the same time.

A snapshot reads containers from one list call, so a container that another process removes
meanwhile cannot crash it. Cleanup of one session leaves other sessions alone.
"""

from __future__ import annotations

import secrets

import docker
import pytest

from harness import cleanup, labels
from harness.placement import HOST, snapshot_engine


def _labelled_container(client, session: str):
    container_labels = {**labels.managed_labels("job"), labels.SESSION: session}
    return client.containers.create("busybox:latest", ["true"], labels=container_labels,
                                    name=f"harness-race-{session}")


@pytest.mark.engine
def test_snapshot_reads_list_only(engine_client, monkeypatch) -> None:
    container = _labelled_container(engine_client, labels.session_id())

    def fail_inspection(container_id):
        pytest.fail(f"snapshot inspected container {container_id}; a concurrent removal would break it")

    monkeypatch.setattr(engine_client.api, "inspect_container", fail_inspection)
    try:
        snapshot = snapshot_engine(engine_client, HOST, "race")
    finally:
        container.remove(force=True)

    # The list call alone returns the container, so no removal between two calls can break it.
    record = next(record for record in snapshot.containers if record.name == container.name)
    assert record.state == "created"
    assert record.labels[labels.SESSION] == labels.session_id()


@pytest.mark.engine
def test_clean_removes_one_session(engine_client) -> None:
    session = secrets.token_hex(4)
    container = _labelled_container(engine_client, session)
    try:
        found = cleanup.clean(engine_client, session=session)
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass

    assert found.containers == [(container.name, session)]
    with pytest.raises(docker.errors.NotFound):
        engine_client.containers.get(container.id)
