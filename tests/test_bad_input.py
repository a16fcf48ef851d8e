"""Invalid scenario folders through `harness run`: one error line, exit code 2, nothing created.

Each case copies the seed scenario, breaks one thing and runs the real command in a subprocess.
The check after each run compares full listings of the engine's containers, images, networks
and volumes, plus /etc/hosts and /etc/docker/certs.d, with the listings taken before it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import labels

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = REPO_ROOT / "scenarios" / "seed"
HOSTS_FILE = Path("/etc/hosts")
CERTS_DIR = Path("/etc/docker/certs.d")
ERROR_PREFIX = "harness: error: "
TEARDOWN_SECONDS = 300  # a generous bound for tearing down a pipeline that should not have started
# A record of the start-up sweep, which removes what dead sessions left.
SWEEP_RECORD = re.compile(r"\d\d:\d\d:\d\d INFO harness\.cleanup: ")


@dataclass
class Outcome:
    """What one `harness` subprocess did: exit code, output and the session id it ran as."""

    returncode: int
    stdout: str
    stderr: str
    session: str

    @property
    def error_lines(self) -> list[str]:
        """The non-empty stderr lines, without the start-up sweep's records of other sessions' leftovers.

        The sweep removes what dead sessions left, and another test or xdist worker can leave
        some at any moment, so those records may precede the error line.
        """
        return [line for line in self.stderr.splitlines() if line.strip() and not SWEEP_RECORD.match(line)]


def run_harness(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Outcome:
    """Run `python -m harness.cli ARGS` from the repository root under a new session id.

    A run still going after ``timeout`` seconds gets SIGTERM, which the command turns into its
    normal teardown, and the test fails once that teardown is over. SIGKILL would leave a
    started pipeline's containers and host trust entries behind.
    """
    session = secrets.token_hex(4)
    environment = {**os.environ, "HARNESS_SESSION_ID": session, **(env or {})}
    environment.pop("HARNESS_OWNER_PID", None)
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=REPO_ROOT, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=TEARDOWN_SECONDS)
        pytest.fail(f"`harness {' '.join(args)}` still ran after {timeout:.0f} s; stderr:\n{stderr}")
    return Outcome(process.returncode, stdout, stderr, session)


@dataclass(frozen=True)
class EngineState:
    """Every container, image, network and volume on the engine, and the host's registry trust.

    Each resource maps to its labels; host trust entries map to the session that wrote them.
    """

    resources: dict[str, dict[str, str]]
    volume_users: dict[str, list[dict[str, str]]]
    host_trust: dict[str, str]

    @classmethod
    def capture(cls, client) -> EngineState:
        """List everything on the engine (no filter) and read /etc/hosts and certs.d."""
        api = client.api
        resources: dict[str, dict[str, str]] = {}
        volume_users: dict[str, list[dict[str, str]]] = {}
        # Volumes before containers: a container created in between then shows up with the
        # anonymous volume it brought, so the volume is attributed to the container's session.
        volumes = api.volumes().get("Volumes") or []
        containers = api.containers(all=True)
        owners_by_ip = _owners_by_ip(containers)
        for container in containers:
            resources[f"container {container['Names'][0]} {container['Id'][:12]}"] = container["Labels"] or {}
            for mount in container.get("Mounts", []):
                if mount.get("Name"):
                    volume_users.setdefault(mount["Name"], []).append(container["Labels"] or {})
        for image in api.images(all=True):
            resources[f"image {image['Id']}"] = image.get("Labels") or {}
            for tag in image.get("RepoTags") or []:
                resources[f"image tag {tag} {image['Id']}"] = _tag_labels(tag, image.get("Labels") or {}, owners_by_ip)
        for network in api.networks():
            resources[f"network {network['Name']} {network['Id'][:12]}"] = network.get("Labels") or {}
        for volume in volumes:
            resources[f"volume {volume['Name']}"] = volume.get("Labels") or {}
        return cls(resources, volume_users, _host_trust())

    def leftovers(self, after: EngineState, session: str) -> list[str]:
        """Return what appeared between this state and ``after`` that may belong to ``session``.

        Resources labelled with another session are someone else's. When another session created
        or removed labelled resources meanwhile, unlabelled newcomers (a DooD job's containers,
        anonymous volumes, host entries without a marker) cannot be attributed and are left out.
        """
        every = {**self.resources, **after.resources}
        changed = self.resources.keys() ^ after.resources.keys()
        busy = bool({every[key].get(labels.SESSION) for key in changed} - {None, session})

        found = []
        for key in sorted(after.resources.keys() - self.resources.keys()):
            owner = after.resources[key].get(labels.SESSION)
            if key.startswith("volume "):
                users = after.volume_users.get(key.removeprefix("volume "), [])
                owner = owner or next((user.get(labels.SESSION) for user in users if user.get(labels.SESSION)), None)
            if owner == session or (owner is None and not busy):
                found.append(key)
        for entry in sorted(after.host_trust.keys() - self.host_trust.keys()):
            owner = after.host_trust[entry]
            if owner == session or (owner == "" and not busy):
                found.append(entry)
        return found


def _owners_by_ip(containers: list[dict]) -> dict[str, str]:
    """Map the address of each labelled container, such as a session's pull mirror, to its session."""
    owners = {}
    for container in containers:
        session = (container["Labels"] or {}).get(labels.SESSION)
        networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
        for network in networks.values():
            if session and network.get("IPAddress"):
                owners[network["IPAddress"]] = session
    return owners


def _tag_labels(tag: str, image_labels: dict[str, str], owners_by_ip: dict[str, str]) -> dict[str, str]:
    """Return an image tag's labels, with the session of the registry that an ``<ip>/...`` tag names.

    A session pushes an image to its mirror through a temporary ``<mirror ip>/<repository>`` tag,
    which other sessions' captures see for a moment.
    """
    registry = tag.split("/", 1)[0].rsplit(":", 1)[0]
    if "/" in tag and registry in owners_by_ip:
        return {**image_labels, labels.SESSION: owners_by_ip[registry]}
    return image_labels


def _host_trust() -> dict[str, str]:
    """Map each /etc/hosts line and certs.d entry to the harness session that wrote it ("" if none)."""
    trust: dict[str, str] = {}
    owner = ""
    for line in HOSTS_FILE.read_text().splitlines():
        if line.startswith(f"# BEGIN {labels.PREFIX} "):
            owner = line.split()[3]
        trust[f"/etc/hosts line {line!r}"] = owner
        if line.startswith(f"# END {labels.PREFIX} "):
            owner = ""
    if CERTS_DIR.is_dir():
        for entry in CERTS_DIR.iterdir():
            marker = entry / f".{labels.PREFIX}"
            text = marker.read_text().split() if marker.is_file() else []
            trust[f"certs.d entry {entry.name}"] = text[0] if text else ""
    return trust


def assert_single_error(outcome: Outcome, code: int, *fragments: str) -> str:
    """Assert the exit code, no traceback, and one stderr line containing every fragment in order."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.returncode == code, outcome.stderr
    assert len(outcome.error_lines) == 1, outcome.stderr
    line = outcome.error_lines[0]
    assert line.startswith(ERROR_PREFIX), line
    position = 0
    for fragment in fragments:
        found = line.find(fragment, position)
        assert found >= 0, f"{fragment!r} missing after column {position} in: {line}"
        position = found + len(fragment)
    return line


# Breakers: each returns a function that changes one file of a copied seed scenario.

Breaker = Callable[[Path], None]


def replace_text(relative: str, old: str, new: str) -> Breaker:
    def breaker(folder: Path) -> None:
        path = folder / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new, 1))
    return breaker


def truncate_at(relative: str, marker: str) -> Breaker:
    """Cut the file at the first ``marker`` (which must occur), dropping it and all that follows."""
    def breaker(folder: Path) -> None:
        path = folder / relative
        text = path.read_text()
        assert marker in text, f"{marker!r} not in {path}"
        path.write_text(text[:text.index(marker)])
    return breaker


def append_text(relative: str, text: str) -> Breaker:
    def breaker(folder: Path) -> None:
        with open(folder / relative, "a") as handle:
            handle.write(text)
    return breaker


def write_text(relative: str, text: str) -> Breaker:
    def breaker(folder: Path) -> None:
        (folder / relative).write_text(text)
    return breaker


def link_outside(relative: str) -> Breaker:
    """Replace ``relative`` by a symbolic link to a copy of it outside the scenario folder."""
    def breaker(folder: Path) -> None:
        path = folder / relative
        outside = folder.parent / f"outside-{path.name}"
        if path.is_dir():
            shutil.copytree(path, outside)
            shutil.rmtree(path)
        else:
            shutil.copy(path, outside)
            path.unlink()
        path.symlink_to(outside)
    return breaker


def chain(*breakers: Breaker) -> Breaker:
    def breaker(folder: Path) -> None:
        for step in breakers:
            step(folder)
    return breaker


DIND_PIPELINE = "project/.gitlab-ci.yml"
DOOD_PIPELINE = "dood.gitlab-ci.yml"
DIND_CONFIG = "config.dind.toml"
DOOD_CONFIG = "config.dood.toml"
SCENARIO = "scenario.toml"
IMAGE_FIX = "run `harness images build`"


@dataclass(frozen=True)
class Case:
    """One broken scenario: how to break it, the mode to run, and the error line expected.

    ``file`` is relative to the scenario folder; an empty ``key`` means the error is about the
    whole file.
    """

    breaker: Breaker
    file: str
    key: str
    problem: str
    fix: str
    mode: str = "dind"


CASES = {
    # scenario.toml
    "scenario-toml-syntax": Case(
        write_text(SCENARIO, 'name = "seed"\n[project\npath = "project"\n'),
        SCENARIO, "line 2", "invalid TOML", "fix the syntax"),
    "scenario-toml-missing": Case(
        lambda folder: (folder / SCENARIO).unlink(),
        SCENARIO, "", "scenario.toml not found", "create it"),
    "scenario-unknown-key": Case(
        replace_text(SCENARIO, '[project]\n', 'colour = "red"\n[project]\n'),
        SCENARIO, "colour", "unknown key", "use one of: expect, modes, name"),
    "scenario-unknown-mode-key": Case(
        replace_text(SCENARIO, 'runner_config = "config.dind.toml"', 'runner_conifg = "config.dind.toml"'),
        SCENARIO, "modes.dind.runner_conifg", "unknown key", "did you mean `runner_config`?"),
    "scenario-unknown-project-key": Case(
        replace_text(SCENARIO, 'namespace = "devopsman"', 'namespace = "devopsman"\nbrnach = "main"'),
        SCENARIO, "project.brnach", "unknown key", "did you mean `branch`?"),
    "scenario-path-dotdot": Case(
        chain(write_text("../outside.yml", "job: {script: [true]}\n"),
              replace_text(SCENARIO, 'pipeline = "project/.gitlab-ci.yml"', 'pipeline = "project/../../outside.yml"')),
        SCENARIO, "modes.dind.pipeline", "leads outside the scenario folder", "no '..'"),
    "scenario-absolute-path": Case(
        replace_text(SCENARIO, 'runner_config = "config.dind.toml"', 'runner_config = "/etc/hostname"'),
        SCENARIO, "modes.dind.runner_config", "absolute path '/etc/hostname'", "relative to the scenario folder"),
    "scenario-pipeline-symlink-out": Case(
        link_outside(DIND_PIPELINE),
        SCENARIO, "modes.dind.pipeline", "leads outside the scenario folder", "no symbolic links out"),
    "scenario-project-symlink-out": Case(
        chain(lambda folder: shutil.copytree(folder / "project", folder.parent / "outside-project"),
              lambda folder: (folder / "src").symlink_to(folder.parent / "outside-project"),
              replace_text(SCENARIO, 'path = "project"', 'path = "src"')),
        SCENARIO, "project.path", "leads outside the scenario folder", "no symbolic links out"),
    "scenario-project-file-symlink-out": Case(
        chain(write_text("../outside.txt", "a file of the machine\n"),
              lambda folder: (folder / "project" / "notes.txt").symlink_to(folder.parent / "outside.txt")),
        SCENARIO, "project.path", "project/notes.txt is a symbolic link to", "replace the link by a copy"),
    "scenario-pipeline-is-folder": Case(
        replace_text(SCENARIO, 'pipeline = "project/.gitlab-ci.yml"', 'pipeline = "project"'),
        SCENARIO, "modes.dind.pipeline", "is not a file", "name a file"),
    "scenario-missing-pipeline": Case(
        lambda folder: (folder / DOOD_PIPELINE).unlink(),
        SCENARIO, "modes.dood.pipeline", "'dood.gitlab-ci.yml' does not exist", "fix the path", mode="dood"),
    "scenario-unknown-mode": Case(
        replace_text(SCENARIO, "[modes.dood]", "[modes.dind_copy]"),
        SCENARIO, "modes.dind_copy.kind", "missing", 'write kind = "dind" or kind = "dood"', mode="dood"),
    "scenario-mode-missing": Case(
        # The expectations name the dood mode too, so they go with it.
        chain(truncate_at(SCENARIO, "[[expect]]"),
              replace_text(SCENARIO, '[modes.dood]\npipeline = "dood.gitlab-ci.yml"\n', ""),
              replace_text(SCENARIO, 'runner_config = "config.dood.toml"\n', ""),
              replace_text(SCENARIO, "differs = ", "# differs = ")),
        SCENARIO, "modes.dood", "mode not defined", "add a [modes.dood] table", mode="dood"),
    "scenario-registry-hostname": Case(
        replace_text(SCENARIO, 'hostname = "registry.cn-beijing.aliyuncs.com"', 'hostname = "../../etc"'),
        SCENARIO, "registry.hostname", "is not a DNS name", "such as registry.example.com"),
    "scenario-registry-variable": Case(
        replace_text(SCENARIO, 'user_variable = "DOCKER_REGISTRY_USER"', 'user_variable = "REGISTRY-USER"'),
        SCENARIO, "registry.user_variable", "is not a variable name", "letters, digits and '_'"),
    "scenario-project-namespace": Case(
        replace_text(SCENARIO, 'namespace = "devopsman"', 'namespace = "devops man"'),
        SCENARIO, "project.namespace", "invalid project namespace", "letters, digits"),
    "scenario-watch-relative": Case(
        replace_text(SCENARIO, 'paths = ["/logs/nodedemo"]', 'paths = ["logs/nodedemo"]'),
        SCENARIO, "watch.paths[0]", "is not an absolute path", '"/logs/app"'),
    "scenario-watch-dotdot": Case(
        replace_text(SCENARIO, 'paths = ["/logs/nodedemo"]', 'paths = ["/logs/../etc"]'),
        SCENARIO, "watch.paths[0]", "is not an absolute path", 'without "." or ".."'),
    # .gitlab-ci.yml
    "pipeline-yaml-syntax": Case(
        replace_text(DIND_PIPELINE, "  stage: build\n", "  stage: build\n    when: [always\n"),
        DIND_PIPELINE, "line 20", "invalid YAML: mapping values are not allowed here", "fix the indentation"),
    "pipeline-unknown-job-key": Case(
        replace_text(DIND_PIPELINE, "  stage: build\n", "  stage: build\n  servics: [docker:dind]\n"),
        DIND_PIPELINE, "BuildImages.servics", "unknown key", "did you mean `services`?"),
    "pipeline-unknown-service-key": Case(
        replace_text(DIND_PIPELINE, "  stage: build\n", "  stage: build\n  services: [{name: docker:dind, aliass: d}]\n"),
        DIND_PIPELINE, "BuildImages.services[0].aliass", "unknown key", "did you mean `alias`?"),
    "pipeline-misspelled-global": Case(
        replace_text(DIND_PIPELINE, "stages:", "stagse:"),
        DIND_PIPELINE, "stagse", "unknown top-level key", "did you mean `stages`?"),
    "pipeline-missing-stage": Case(
        replace_text(DIND_PIPELINE, "  stage: build\n", "  stage: publish\n"),
        DIND_PIPELINE, "BuildImages.stage", 'stage "publish" is not defined', 'add "publish" to stages:'),
    "pipeline-script-typo": Case(
        replace_text(DIND_PIPELINE, "TestImage:\n  stage: test\n  script:", "TestImage:\n  stage: test\n  scirpt:"),
        DIND_PIPELINE, "TestImage.scirpt", "unknown key", "did you mean `script`?"),
    "pipeline-job-image": Case(
        replace_text(DIND_PIPELINE, "  stage: build\n", "  stage: build\n  image: nosuch/builder:1\n"),
        DIND_PIPELINE, "BuildImages.image", 'image "nosuch/builder:1" does not exist', IMAGE_FIX),
    "pipeline-invalid-image-reference": Case(
        replace_text(DIND_PIPELINE, "  stage: build\n", "  stage: build\n  image: Docker:Stable\n"),
        DIND_PIPELINE, "BuildImages.image", 'invalid image reference "Docker:Stable"', "in lower case"),
    "pipeline-job-service-image": Case(
        replace_text(DIND_PIPELINE, "  stage: build\n", "  stage: build\n  services: [docker:dind, nosuch:dind]\n"),
        DIND_PIPELINE, "BuildImages.services[1]", 'image "nosuch:dind" does not exist', IMAGE_FIX),
    "pipeline-top-level-image": Case(
        replace_text(DIND_PIPELINE, "image: docker:stable", "image: nosuch:stable"),
        DIND_PIPELINE, "image", 'image "nosuch:stable" does not exist', IMAGE_FIX),
    "pipeline-default-image": Case(
        replace_text(DIND_PIPELINE, "image: docker:stable", "default:\n  image: nosuch:stable"),
        DIND_PIPELINE, "default.image", 'image "nosuch:stable" does not exist', IMAGE_FIX),
    "pipeline-default-service-image": Case(
        replace_text(DIND_PIPELINE, "services:\n  - docker:19.03.7-dind", "services:\n  - nosuch:19.03.7-dind"),
        DIND_PIPELINE, "services[0]", 'image "nosuch:19.03.7-dind" does not exist', IMAGE_FIX),
    "pipeline-dood-job-image": Case(
        replace_text(DOOD_PIPELINE, "  stage: test\n", "  stage: test\n  image: nosuch:1\n"),
        DOOD_PIPELINE, "TestImage.image", 'image "nosuch:1" does not exist', IMAGE_FIX, mode="dood"),
    # config.toml
    "config-toml-syntax": Case(
        replace_text(DIND_CONFIG, 'executor = "docker"', 'executor = docker'),
        DIND_CONFIG, "", "invalid TOML: Invalid value (at line 7, column 14)", "fix the syntax"),
    "config-unknown-executor": Case(
        replace_text(DIND_CONFIG, 'executor = "docker"', 'executor = "shell"'),
        DIND_CONFIG, "runners[0].executor", 'executor "shell" is not supported', 'set executor = "docker"'),
    "config-missing-executor": Case(
        replace_text(DIND_CONFIG, '  executor = "docker"\n', ""),
        DIND_CONFIG, "runners[0].executor", "missing executor", 'set executor = "docker"'),
    "config-unknown-key": Case(
        replace_text(DIND_CONFIG, "privileged = true", "privilegd = true"),
        DIND_CONFIG, "runners[0].docker.privilegd", "unknown key", "did you mean `privileged`?"),
    "config-unknown-key-dood": Case(
        replace_text(DOOD_CONFIG, 'image = "busybox"', 'image = "busybox"\n    volume = ["/cache"]'),
        DOOD_CONFIG, "runners[0].docker.volume", "unknown key", "did you mean `volumes`?", mode="dood"),
    "config-wrong-type": Case(
        replace_text(DIND_CONFIG, "privileged = true", 'privileged = "yes"'),
        DIND_CONFIG, "runners[0].docker.privileged", "expected true or false, got a string", "write true or false"),
    "config-missing-docker-table": Case(
        write_text(DIND_CONFIG, '[[runners]]\n  name = "x"\n  executor = "docker"\n'),
        DIND_CONFIG, "runners[0].docker", "missing [runners.docker] table", "add [runners.docker]"),
    "config-default-image": Case(
        chain(replace_text(DOOD_PIPELINE, "image: docker:stable\n", ""),
              replace_text(DOOD_CONFIG, 'image = "busybox"', 'image = "nosuch-default:1"')),
        DOOD_CONFIG, "runners[0].docker.image", 'image "nosuch-default:1" does not exist', IMAGE_FIX,
        mode="dood"),
    "config-default-image-missing": Case(
        chain(replace_text(DOOD_PIPELINE, "image: docker:stable\n", ""),
              replace_text(DOOD_CONFIG, '    image = "busybox"\n', "")),
        DOOD_CONFIG, "runners[0].docker.image", "missing, and a job names no image", 'set image = "busybox"',
        mode="dood"),
    "config-service-image": Case(
        append_text(DIND_CONFIG, '    [[runners.docker.services]]\n      name = "nosuch-service:1"\n'),
        DIND_CONFIG, "runners[0].docker.services[0].name", 'image "nosuch-service:1" does not exist', IMAGE_FIX),
    "config-helper-image": Case(
        replace_text(DOOD_CONFIG, 'image = "busybox"', 'image = "busybox"\n    helper_image = "nosuch-helper:1"'),
        DOOD_CONFIG, "runners[0].docker.helper_image", 'image "nosuch-helper:1" does not exist', IMAGE_FIX,
        mode="dood"),
    # a bad mode reported before the good one starts
    "both-modes-bad-dood": Case(
        replace_text(DOOD_CONFIG, 'executor = "docker"', 'executor = "kubernetes"'),
        DOOD_CONFIG, "runners[0].executor", 'executor "kubernetes" is not supported', 'set executor = "docker"',
        mode="both"),
}


@pytest.fixture
def scenario_copy(tmp_path: Path) -> Path:
    """A copy of the seed scenario in its own folder under tmp_path."""
    folder = tmp_path / "space" / "seed"
    shutil.copytree(SEED, folder, symlinks=True)
    return folder.resolve()


@pytest.mark.engine
@pytest.mark.images
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_scenario_fails_cleanly(case: Case, scenario_copy: Path, engine_client) -> None:
    case.breaker(scenario_copy)
    before = EngineState.capture(engine_client)

    outcome = run_harness("run", str(scenario_copy), "--mode", case.mode)

    after = EngineState.capture(engine_client)
    location = f"{scenario_copy / case.file}: {case.key}: " if case.key else f"{scenario_copy / case.file}: "
    assert_single_error(outcome, 2, location, case.problem, "; ", case.fix)
    assert outcome.stdout == ""
    assert before.leftovers(after, outcome.session) == []


@pytest.mark.engine
def test_leftover_check_sees_new_volume(engine_client) -> None:
    session = secrets.token_hex(4)
    before = EngineState.capture(engine_client)
    volume = engine_client.volumes.create(labels=labels.managed_labels("test") | {labels.SESSION: session})
    try:
        after = EngineState.capture(engine_client)
    finally:
        volume.remove(force=True)

    assert before.leftovers(after, session) == [f"volume {volume.name}"]


def test_seed_copy_is_valid(scenario_copy: Path) -> None:
    # Every case above breaks exactly one thing, so the unbroken copy must load cleanly.
    from harness.pipeline import load_pipeline
    from harness.runner_config import load_runner_config
    from harness.scenario import load_scenario

    loaded = load_scenario(scenario_copy)
    for files in loaded.modes.values():
        assert load_pipeline(files.pipeline).jobs
        assert load_runner_config(files.runner_config).warnings == ()


@pytest.mark.parametrize("given", ["QA/run 1", "qa-run-1"])
def test_invalid_session_id_rejected(given: str) -> None:
    outcome = run_harness("run", "seed", "--mode", "dind", env={"HARNESS_SESSION_ID": given})

    # Catches an id that reaches docker names ("/" and spaces) or temporary directory names that
    # the dead-session sweep cannot read back (not hex).
    assert outcome.returncode == 2, outcome.stderr
    assert outcome.error_lines == [f'harness: error: HARNESS_SESSION_ID: "{given}" is invalid; use 4 to 32 '
                                   "lowercase hex digits, such as 0a1b2c3d, or unset it for a random id"]


@pytest.mark.parametrize("output, problem", [
    ("/proc/report.html", "/proc/report.html cannot be written"),
    ("/nonexistent-harness-dir/report.html", "directory /nonexistent-harness-dir does not exist"),
])
def test_unwritable_report_rejected_first(output: str, problem: str) -> None:
    outcome = run_harness("report", "seed", "--mode", "dind", "-o", output)

    # Catches a report path checked only after the pipeline ran for minutes, or a directory
    # created on the way.
    assert outcome.returncode == 2, outcome.stderr
    assert len(outcome.error_lines) == 1, outcome.stderr
    assert f"-o: {problem}" in outcome.stderr
    assert not Path("/nonexistent-harness-dir").exists()
