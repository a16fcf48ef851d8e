"""Snapshots and cleanup on an engine that other sessions change at the same time.

A container that another process removes between the list call and the inspection must be left
out, not crash the run. The race is forced by removing the container for real right before the
harness inspects it.
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
def test_snapshot_skips_vanished_container(engine_client, monkeypatch) -> None:
    container = _labelled_container(engine_client, labels.session_id() + secrets.token_hex(2))
    original = engine_client.api.inspect_container

    def remove_then_inspect(container_id):
        if container_id.startswith(container.id):
            container.remove(force=True)
        return original(container_id)

    monkeypatch.setattr(engine_client.api, "inspect_container", remove_then_inspect)
    snapshot = snapshot_engine(engine_client, HOST, "race")

    assert container.name not in {record.name for record in snapshot.containers}
    with pytest.raises(docker.errors.NotFound):
        original(container.id)


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
