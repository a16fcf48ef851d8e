"""Parsing of a dind service's dockerd command line, which decides the socket placement reads."""

from __future__ import annotations

import pytest

from harness.placement import ContainerRecord, Snapshot, dockerd_hosts

ENTRYPOINT_ARGUMENTS = ["dockerd", "--host=unix:///certs/client/docker.sock", "--host=tcp://0.0.0.0:2375",
                        "--tls=false"]


def test_entrypoint_hosts_in_order():
    # Catches a reader that picks the tcp:// listener, or the default socket, over a moved one.
    assert dockerd_hosts(ENTRYPOINT_ARGUMENTS) == ["unix:///certs/client/docker.sock", "tcp://0.0.0.0:2375"]


@pytest.mark.parametrize(("arguments", "expected"), [
    (["dockerd", "-H", "unix:///run/a.sock"], ["unix:///run/a.sock"]),
    (["dockerd", "-H=unix:///run/b.sock"], ["unix:///run/b.sock"]),
    (["dockerd", "-Hunix:///run/c.sock"], ["unix:///run/c.sock"]),
    (["dockerd", "--host", "unix:///run/d.sock"], ["unix:///run/d.sock"]),
])
def test_short_and_separate_forms(arguments, expected):
    # Catches a parser that accepts only --host=VALUE, the entrypoint's own form.
    assert dockerd_hosts(arguments) == expected


def test_no_host_flags():
    # Catches a parser that takes other flags' values for hosts. The caller then uses the default.
    assert dockerd_hosts(["dockerd", "--tls=false", "--mtu", "1200", "--host"]) == []


def test_masked_snapshot_keeps_start_record() -> None:
    snapshot = Snapshot("dind:Build", "before removal", images=["app:s3cret-tag"], volumes=["vol-s3cret-tag"],
                        containers=[ContainerRecord("web-s3cret-tag", "abc", "app:s3cret-tag", "running")],
                        paths={"/logs": ["s3cret-tag.log"]}, start={"plain_tcp": True, "ready_seconds": 1.5})

    masked = snapshot.masked(lambda text: text.replace("s3cret-tag", "[MASKED]"))

    assert masked.images == ["app:[MASKED]"]
    assert masked.volumes == ["vol-[MASKED]"]
    assert masked.containers[0].name == "web-[MASKED]"
    assert masked.paths == {"/logs": ["[MASKED].log"]}
    # Catches a copy that drops fields it does not mask, such as how a dind daemon started.
    assert masked.start == {"plain_tcp": True, "ready_seconds": 1.5}
