"""The host of a run: the engine that plays the CI machine's Docker, and that machine's filesystem.

A DooD job gets the host's socket, so whatever it does lands on the host engine. Two kinds exist:

- ``sandbox`` (the default): a disposable engine in a privileged container on the real engine
  (:class:`harness.sandbox.SandboxEngine`), one per session. Nothing a job does reaches the real
  engine's own containers and images.
- ``local``: the real engine itself, as a CI machine with a mounted socket has it. Jobs can then
  remove or restart anything on it, so the harness warns when this kind is chosen.

Host paths that jobs bind or that a scenario watches are read on the host's filesystem: the
machine's own for ``local``, the sandbox container's for ``sandbox``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import docker
import docker.errors
import requests
import docker.types

from harness import labels
from harness.errors import EngineError
from harness.image_catalog import REPO_ROOT
from harness.registry import shared_mirror, stop_shared_mirror
from harness.registry_trust import HOST_CERTS_DIR, HOSTS_FILE, registry_state_dir
from harness.sandbox import SandboxEngine

log = logging.getLogger(__name__)

KINDS = ("sandbox", "local")
# Private addresses that dockerd 20.10 neither takes for its default bridge nor hands out from
# its default pools (172.17-31.0.0/16 and 192.168.0.0/16 in /20 pieces).
INFRASTRUCTURE_SUBNETS = "10.212.0.0/16"
LOCAL_WARNING = ("host engine: local; DooD jobs run against the real engine and can remove or "
                 "restart its containers and images")


@dataclass
class HostEngine:
    """The engine jobs run against (``client``) and the real engine under it (``real_client``).

    For ``local`` both are the same client. The real engine always runs the shared pull mirror,
    which a sandbox pulls through.
    """

    kind: str
    client: docker.DockerClient
    real_client: docker.DockerClient
    sandbox: SandboxEngine | None = None
    # The real engine's network for the mirror and registries; None is the default bridge.
    network: str | None = None
    # Whether close() also stops the network's mirror and removes the network.
    owns_network: bool = True

    @classmethod
    def local(cls, client: docker.DockerClient) -> HostEngine:
        """Return the real engine behind ``client`` as the host."""
        return cls("local", client, client)

    @classmethod
    def in_sandbox(cls, sandbox: SandboxEngine) -> HostEngine:
        """Return the started ``sandbox`` as the host."""
        return cls("sandbox", sandbox.client, sandbox.real_client, sandbox)

    @property
    def description(self) -> str:
        """One phrase for logs and reports, such as ``sandbox dind-dood-harness-1a2b-sandbox-3c4d``."""
        return f"sandbox {self.sandbox.name}" if self.sandbox else "local engine"

    def close(self) -> None:
        """Remove a sandbox with everything jobs left in it, its mirror and its network; nothing for ``local``."""
        if self.sandbox is None:
            return
        self.sandbox.stop()
        if not self.owns_network:
            return
        stop_shared_mirror(self.network)
        try:
            _remove_network(self.real_client.networks.get(self.network))
        except docker.errors.NotFound:
            pass

    def another_sandbox(self) -> HostEngine:
        """Start another sandbox on this sandbox's network and mirror; its close() leaves both alone."""
        sandbox = _start_sandbox(self.real_client, self.network, self.sandbox.mirror)
        return HostEngine("sandbox", sandbox.client, self.real_client, sandbox, self.network, owns_network=False)

    def responds(self) -> bool:
        """Return whether the host's daemon still answers a ping."""
        try:
            return bool(self.client.ping())
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            return False

    def coordinator_address(self) -> str:
        """Return the address of this machine that a runner container on this host reaches.

        For a sandbox it is the gateway of the infrastructure network, which is this machine's
        end of the bridge the sandbox container sits on. For ``local`` it is the gateway of the
        default bridge, where runner containers start. Only the engine's network list is read.

        Raises:
            EngineError: the network has no IPv4 gateway, so no runner could reach a server here.
        """
        name = self.network if self.sandbox else "bridge"
        return network_gateway(self.real_client, name)

    def list_path(self, path: str) -> list[str] | None:
        """Return the file names in the host directory ``path``, or None when it is no directory."""
        if self.sandbox:
            return self.sandbox.list_path(path)
        return sorted(os.listdir(path)) if os.path.isdir(path) else None

    def remove_path(self, path: str) -> None:
        """Delete the host path ``path`` with everything below it."""
        if self.sandbox:
            self.sandbox.remove_path(path)
        else:
            shutil.rmtree(path, ignore_errors=True)

    def trust_paths(self) -> tuple[Path, Path]:
        """Return the ``certs.d`` directory and hosts file that the host's daemon reads."""
        if self.sandbox:
            return self.sandbox.certs_dir, self.sandbox.hosts_file
        return HOST_CERTS_DIR, HOSTS_FILE

    def resolver(self) -> Callable[[str, bool], set[str]] | None:
        """Return how to resolve a name as the host's daemon does, or None for this machine's resolver."""
        return self.sandbox.resolve_v4 if self.sandbox else None


def open_sandbox(real_client: docker.DockerClient) -> HostEngine:
    """Start a sandbox host, with its own infrastructure network and pull mirror, on the real engine.

    The sandbox, the mirror and every registry of a run share one network of the real engine
    whose subnet lies in ``INFRASTRUCTURE_SUBNETS``. A dind service inside the sandbox gives its
    own bridge dockerd's default 172.17.0.0/16, which would hide registries on the real engine's
    default bridge from that daemon.

    Runner containers bind the harness package and temporary checkouts, and registries and dind
    services bind the registry wiring files. Those paths are shared into the sandbox read-write
    (the package read-only), so the same runner config works on both kinds of host.
    NOTE: a DooD job that binds a path under the shared temporary directory reaches the real
    machine's copy. A sandbox-private temporary directory for the harness would close that gap.

    Raises:
        EngineError: the sandbox daemon did not start; nothing is left behind.
    """
    network = _create_infrastructure_network(real_client)
    try:
        # Started empty: each run pushes the stand-ins it names.
        sandbox = _start_sandbox(real_client, network.name, shared_mirror(real_client, network.name, []))
    except BaseException:
        stop_shared_mirror(network.name)
        _remove_network(network)
        raise
    return HostEngine("sandbox", sandbox.client, real_client, sandbox, network.name)


def _start_sandbox(real_client: docker.DockerClient, network: str, mirror) -> SandboxEngine:
    registry_state_dir().mkdir(parents=True, exist_ok=True)
    return (SandboxEngine(real_client).with_network(network).with_mirror(mirror)
            .with_shared_path(REPO_ROOT, read_only=True)
            .with_shared_path(tempfile.gettempdir())
            .with_shared_path(registry_state_dir())
            .start())


def _create_infrastructure_network(client: docker.DockerClient):
    """Create this session's labelled infrastructure network on a free /24 of ``INFRASTRUCTURE_SUBNETS``."""
    name = f"{labels.PREFIX}-{labels.session_id()}-infra-{secrets.token_hex(3)}"
    candidates = list(ipaddress.ip_network(INFRASTRUCTURE_SUBNETS).subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates[:20]:
        # The gateway is set, not left to dockerd, because the coordinator binds to it.
        pool = docker.types.IPAMPool(subnet=str(subnet), gateway=str(next(subnet.hosts())))
        ipam = docker.types.IPAMConfig(pool_configs=[pool])
        try:
            network = client.networks.create(name, driver="bridge", ipam=ipam,
                                             labels=labels.managed_labels("infrastructure"))
        except docker.errors.APIError as error:
            # Another session uses this subnet; dockerd reports the overlap, so try the next one.
            if "overlap" not in str(error).lower():
                raise
            continue
        log.info("infrastructure network %s created on %s", name, subnet)
        return network
    raise EngineError(f"no free /24 in {INFRASTRUCTURE_SUBNETS} for network {name}",
                      "remove networks of dead sessions with `harness clean`")


def network_gateway(client: docker.DockerClient, name: str) -> str:
    """Return the IPv4 gateway of the network ``name``, this machine's address on that bridge.

    Raises:
        EngineError: the network does not exist or has no IPv4 gateway.
    """
    try:
        configs = client.networks.get(name).attrs.get("IPAM", {}).get("Config") or []
    except docker.errors.NotFound:
        raise EngineError(f"network {name} not found, so the coordinator has no address on it",
                          "remove networks of dead sessions with `harness clean` and run again") from None
    for config in configs:
        gateway = config.get("Gateway", "")
        if gateway and ipaddress.ip_address(gateway).version == 4:
            return gateway
    raise EngineError(f"network {name} has no IPv4 gateway, so runner containers cannot reach the coordinator",
                      "give the network an IPv4 subnet, or run with --host-engine=sandbox")


def _remove_network(network) -> None:
    try:
        network.remove()
    except docker.errors.NotFound:
        pass
