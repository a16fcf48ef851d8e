"""Pod manifests (``apiVersion: v1``, ``kind: Pod``) read into the subset the pod runner emulates.

Every key is checked against the fields the runner supports. An unknown or unsupported key
raises :class:`InputError` with its path, such as ``spec.containers[1].lifecycle``, so a manifest
is never run with part of it silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.errors import InputError
from harness.pipeline_reader import check_expanded_size

RESTART_POLICIES = ("Always", "OnFailure", "Never")
HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_POD_KEYS = {"apiVersion", "kind", "metadata", "spec"}
_METADATA_KEYS = {"name", "namespace", "labels", "annotations"}
_SPEC_KEYS = {"containers", "volumes", "restartPolicy", "hostAliases", "terminationGracePeriodSeconds"}
_CONTAINER_KEYS = {"name", "image", "command", "args", "env", "securityContext", "resources",
                   "volumeMounts", "ports", "workingDir", "imagePullPolicy"}
_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
                 "G": 10**9, "T": 10**12, "": 1}


@dataclass(frozen=True)
class Volume:
    """A pod volume: ``kind`` is ``hostPath`` (with ``path`` and ``path_type``) or ``emptyDir``."""

    name: str
    kind: str
    path: str = ""
    path_type: str = ""


@dataclass(frozen=True)
class Mount:
    """A container's ``volumeMounts`` entry."""

    volume: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class Resources:
    """Requests and limits in engine units: CPU in millicores, memory in bytes (0 when unset)."""

    cpu_request: int = 0
    cpu_limit: int = 0
    memory_request: int = 0
    memory_limit: int = 0


@dataclass(frozen=True)
class Container:
    """One entry of ``spec.containers``."""

    name: str
    image: str
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    privileged: bool = False
    resources: Resources = Resources()
    mounts: tuple[Mount, ...] = ()
    working_dir: str = ""


@dataclass(frozen=True)
class PodSpec:
    """A pod manifest reduced to what the runner emulates; ``source`` is the file it came from."""

    name: str
    containers: tuple[Container, ...]
    volumes: tuple[Volume, ...] = ()
    restart_policy: str = "Always"
    host_aliases: tuple[tuple[str, str], ...] = ()
    grace_seconds: int = 30
    labels: dict[str, str] = field(default_factory=dict)
    source: str = "<pod>"


def load_pod(path: str | Path) -> PodSpec:
    """Read and check a pod manifest file.

    Raises:
        InputError: the file is missing, is not YAML, or uses an unsupported field.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(str(path), "", f"cannot read the pod manifest ({error.strerror})",
                         "give the path of an existing YAML file") from error
    except UnicodeDecodeError as error:
        raise InputError(str(path), "", f"cannot read the pod manifest ({error})",
                         "save the file as UTF-8 text") from error
    except yaml.YAMLError as error:
        # PyYAML's message spans several lines (problem, context, position), but the error is one line.
        problem = " ".join(str(error).split())
        raise InputError(str(path), "", f"invalid YAML ({problem})", "fix the YAML syntax") from error
    check_expanded_size(document, str(path))
    return parse_pod(document, str(path))


def parse_pod(document: object, source: str = "<pod>") -> PodSpec:
    """Check a parsed manifest and return its :class:`PodSpec`.

    Raises:
        InputError: a key is unsupported, missing or of the wrong type.
    """
    checker = _Checker(source)
    top = checker.mapping(document, "", _POD_KEYS)
    if top.get("apiVersion") != "v1" or top.get("kind") != "Pod":
        checker.fail("kind", f"expected apiVersion v1 and kind Pod, got {top.get('apiVersion')!r} "
                     f"and {top.get('kind')!r}", "the pod runner reads single Pod manifests only")
    metadata = checker.mapping(top.get("metadata"), "metadata", _METADATA_KEYS)
    name = checker.name(metadata.get("name"), "metadata.name")
    spec = checker.mapping(top.get("spec"), "spec", _SPEC_KEYS)

    volumes = tuple(checker.volume(entry, f"spec.volumes[{index}]")
                    for index, entry in enumerate(checker.sequence(spec.get("volumes", []), "spec.volumes")))
    raw_containers = checker.sequence(spec.get("containers"), "spec.containers")
    if not raw_containers:
        checker.fail("spec.containers", "no containers", "list at least one container")
    containers = tuple(checker.container(entry, f"spec.containers[{index}]", volumes)
                       for index, entry in enumerate(raw_containers))
    checker.unique([c.name for c in containers], "spec.containers", "container name")
    checker.unique([v.name for v in volumes], "spec.volumes", "volume name")

    policy = spec.get("restartPolicy", "Always")
    if policy not in RESTART_POLICIES:
        checker.fail("spec.restartPolicy", f"invalid value {policy!r}", f"use one of {', '.join(RESTART_POLICIES)}")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if not isinstance(grace, int) or grace < 0:
        checker.fail("spec.terminationGracePeriodSeconds", f"invalid value {grace!r}", "give whole seconds >= 0")
    return PodSpec(name=name, containers=containers, volumes=volumes, restart_policy=policy,
                   host_aliases=checker.host_aliases(spec.get("hostAliases", [])), grace_seconds=grace,
                   labels=checker.labels(metadata.get("labels"), "metadata.labels"), source=source)


def parse_cpu(value: object) -> int:
    """Return a CPU quantity (``10m``, ``0.5``, ``2``) in millicores; raises ValueError when invalid."""
    text = str(value)
    if text.endswith("m"):
        return int(text[:-1])
    return round(float(text) * 1000)


def parse_memory(value: object) -> int:
    """Return a memory quantity (``256Mi``, ``1G``, ``1000``) in bytes; raises ValueError when invalid."""
    match = re.fullmatch(r"([0-9.]+)([KMGT]i|[kMGT]|)", str(value))
    if not match:
        raise ValueError(value)
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])


class _Checker:
    """Type and key checks that name the offending path in the manifest."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, fix: str) -> None:
        raise InputError(self.source, key, problem, fix)

    def mapping(self, value: object, key: str, allowed: set[str]) -> dict:
        if not isinstance(value, dict):
            self.fail(key or "(top)", f"expected a mapping, got {type(value).__name__}", "write key: value pairs")
        for name in value:
            if name not in allowed:
                path = f"{key}.{name}" if key else str(name)
                self.fail(path, "unsupported field: the pod runner does not emulate it",
                          f"remove it; supported here: {', '.join(sorted(allowed))}")
        return value

    def sequence(self, value: object, key: str) -> list:
        if not isinstance(value, list):
            self.fail(key, f"expected a list, got {type(value).__name__}", "write a YAML list")
        return value

    def name(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            self.fail(key, f"invalid name {value!r}", "use lowercase letters, digits and '-' (RFC 1123 label)")
        return value

    def labels(self, value: object, key: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(name, str) and isinstance(text, str)
                                                  for name, text in value.items()):
            self.fail(key, "expected a mapping of label names to strings", 'write app: "demo" and quote numbers')
        return dict(value)

    def strings(self, value: object, key: str) -> tuple[str, ...] | None:
        if value is None:
            return None
        items = self.sequence(value, key)
        if not all(isinstance(item, str) for item in items):
            self.fail(key, "every entry must be a string", "quote numbers and flags")
        return tuple(items)

    def unique(self, names: list[str], key: str, what: str) -> None:
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            self.fail(key, f"duplicate {what} {duplicates[0]!r}", f"give every {what} a different value")

    def volume(self, entry: object, key: str) -> Volume:
        volume = self.mapping(entry, key, {"name", "hostPath", "emptyDir"})
        name = self.name(volume.get("name"), f"{key}.name")
        if ("hostPath" in volume) == ("emptyDir" in volume):
            self.fail(key, "a volume needs exactly one of hostPath and emptyDir",
                      "other volume types (configMap, secret, PVC ...) are not emulated")
        if "emptyDir" in volume:
            self.mapping(volume["emptyDir"] or {}, f"{key}.emptyDir", set())
            return Volume(name, "emptyDir")
        host_path = self.mapping(volume["hostPath"], f"{key}.hostPath", {"path", "type"})
        path, path_type = host_path.get("path"), host_path.get("type", "")
        if not isinstance(path, str) or not path.startswith("/"):
            self.fail(f"{key}.hostPath.path", f"invalid path {path!r}", "give an absolute path on the node")
        if path_type not in HOST_PATH_TYPES:
            self.fail(f"{key}.hostPath.type", f"unsupported type {path_type!r}", f"use one of {HOST_PATH_TYPES}")
        return Volume(name, "hostPath", path, path_type)

    def container(self, entry: object, key: str, volumes: tuple[Volume, ...]) -> Container:
        spec = self.mapping(entry, key, _CONTAINER_KEYS)
        image = spec.get("image")
        if not isinstance(image, str) or not image:
            self.fail(f"{key}.image", "missing image", "name the container's image")
        security = self.mapping(spec.get("securityContext", {}), f"{key}.securityContext", {"privileged"})
        for index, port in enumerate(self.sequence(spec.get("ports", []), f"{key}.ports")):
            # Pod ports are informational; the kubelet publishes nothing on the node without hostPort.
            self.mapping(port, f"{key}.ports[{index}]", {"name", "containerPort", "protocol"})
        return Container(
            name=self.name(spec.get("name"), f"{key}.name"), image=image,
            command=self.strings(spec.get("command"), f"{key}.command"),
            args=self.strings(spec.get("args"), f"{key}.args"),
            env=self.env(spec.get("env", []), f"{key}.env"),
            privileged=bool(security.get("privileged", False)),
            resources=self.resources(spec.get("resources", {}), f"{key}.resources"),
            mounts=self.mounts(spec.get("volumeMounts", []), f"{key}.volumeMounts", volumes),
            working_dir=str(spec.get("workingDir", "")))

    def env(self, value: object, key: str) -> tuple[tuple[str, str], ...]:
        pairs = []
        for index, entry in enumerate(self.sequence(value, key)):
            item = self.mapping(entry, f"{key}[{index}]", {"name", "value"})
            if not isinstance(item.get("name"), str):
                self.fail(f"{key}[{index}].name", "missing name", "name the variable")
            pairs.append((item["name"], str(item.get("value", ""))))
        return tuple(pairs)

    def resources(self, value: object, key: str) -> Resources:
        spec = self.mapping(value, key, {"requests", "limits"})
        parsed: dict[str, int] = {}
        for section in ("requests", "limits"):
            quantities = self.mapping(spec.get(section, {}), f"{key}.{section}", {"cpu", "memory"})
            for resource, parse in (("cpu", parse_cpu), ("memory", parse_memory)):
                if resource not in quantities:
                    continue
                try:
                    parsed[f"{resource}_{section[:-1]}"] = parse(quantities[resource])
                except ValueError:
                    self.fail(f"{key}.{section}.{resource}", f"invalid quantity {quantities[resource]!r}",
                              "use a Kubernetes quantity such as 250m, 0.5, 256Mi or 1Gi")
        return Resources(**parsed)

    def mounts(self, value: object, key: str, volumes: tuple[Volume, ...]) -> tuple[Mount, ...]:
        names = {volume.name for volume in volumes}
        mounts = []
        for index, entry in enumerate(self.sequence(value, key)):
            item = self.mapping(entry, f"{key}[{index}]", {"name", "mountPath", "readOnly"})
            if item.get("name") not in names:
                self.fail(f"{key}[{index}].name", f"no volume named {item.get('name')!r}",
                          "declare it under spec.volumes")
            if not str(item.get("mountPath", "")).startswith("/"):
                self.fail(f"{key}[{index}].mountPath", "missing or relative path", "give an absolute path")
            mounts.append(Mount(item["name"], item["mountPath"], bool(item.get("readOnly", False))))
        return tuple(mounts)

    def host_aliases(self, value: object) -> tuple[tuple[str, str], ...]:
        pairs = []
        for index, entry in enumerate(self.sequence(value, "spec.hostAliases")):
            item = self.mapping(entry, f"spec.hostAliases[{index}]", {"ip", "hostnames"})
            for hostname in self.strings(item.get("hostnames", []), f"spec.hostAliases[{index}].hostnames") or ():
                pairs.append((hostname, str(item.get("ip", ""))))
        return tuple(pairs)
