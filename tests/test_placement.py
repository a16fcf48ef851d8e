"""Parsing of a dind service's dockerd command line, which decides the socket placement reads."""

from __future__ import annotations

import pytest

from harness.placement import dockerd_hosts

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
