"""Property tests: any pipeline, runner config, pod manifest or scenario folder ends in a result or one error line.

Hypothesis generates documents near the real formats (known keys with values of any type) and
plain garbage. Each reader must then return a result or raise ``InputError`` whose message is
one line that names the file, the key and a fix. Any other exception fails the test.
The examples per test are capped so that the whole file stays within a few seconds.
"""

from __future__ import annotations

import shutil
import string
from pathlib import Path

import pytest
import tomli_w
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import labels
from harness.errors import InputError
from harness.kubernetes_spec import load_pod
from harness.pipeline import compile_pipeline, load_pipeline
from harness.project import Project
from harness.runner_config import load_runner_config
from harness.scenario import load_scenario

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = REPO_ROOT / "scenarios" / "seed"

# Problems that concern a whole file, so their error names no key (or only a line number).
WHOLE_FILE_PROBLEMS = ("invalid YAML", "invalid TOML", "cannot read", "the file does not contain",
                       "file not found", "scenario.toml not found", "the file defines no visible job")

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text without surrogates, which no file encoding can hold.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
NAMES = st.text(string.ascii_letters + string.digits + "_-.:/ ", min_size=1, max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)


def values(keys=NAMES, scalars=SCALARS):
    """Return a strategy of nested lists and mappings of ``scalars`` under ``keys``."""
    return st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                        | st.dictionaries(keys, children, max_size=4), max_leaves=12)


def documents(known_keys: list[str], scalars=SCALARS):
    """Return a strategy of mappings whose keys are mostly known keys of the format."""
    keys = st.sampled_from(known_keys) | NAMES
    return st.dictionaries(keys, values(keys, scalars), max_size=6)


def assert_input_error(error: InputError, file: Path) -> None:
    """Assert the error shape every reader promises: one line naming the file, the key and a fix."""
    message = str(error)
    assert "\n" not in message, message
    assert "\r" not in message, message
    assert error.file == str(file), message
    assert message.startswith(f"{file}: "), message
    assert error.problem.strip(), message
    assert error.fix.strip(), message
    assert error.key or error.problem.startswith(WHOLE_FILE_PROBLEMS), message


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# .gitlab-ci.yml

JOB_KEYS = ["script", "stage", "image", "services", "rules", "variables", "when", "allow_failure",
            "needs", "extends", "only", "except", "before_script", "after_script", "artifacts",
            "cache", "tags", "timeout", "retry", "parallel", "trigger", "dependencies", "interruptible"]
TOP_KEYS = ["stages", "variables", "default", "image", "services", "workflow", "include",
            "before_script", "after_script", "cache"]
JOB_NAMES = st.sampled_from(["build", "test", ".hidden", "deploy job", "pages"])

near_valid_job = st.fixed_dictionaries(
    {"script": st.lists(TEXT, min_size=1, max_size=3)},
    optional={key: values() for key in JOB_KEYS if key != "script"})
pipelines = st.one_of(
    st.dictionaries(st.sampled_from(TOP_KEYS) | JOB_NAMES, values(st.sampled_from(JOB_KEYS) | NAMES), max_size=5),
    st.dictionaries(JOB_NAMES, near_valid_job, min_size=1, max_size=3),
    st.builds(lambda top, jobs: {**top, **jobs},
              st.fixed_dictionaries({}, optional={key: values() for key in TOP_KEYS}),
              st.dictionaries(JOB_NAMES, near_valid_job, min_size=1, max_size=2)),
)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    source = tmp_path_factory.mktemp("source")
    (source / "README.md").write_text("demo\n")
    return Project.from_directory(source, "group", "demo", branch="master", project_id=42,
                                  work_dir=tmp_path_factory.mktemp("work"))


@FAST
@given(document=pipelines)
def test_pipeline_compiler_any_document(document, project: Project, tmp_path: Path) -> None:
    path = tmp_path / ".gitlab-ci.yml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))

    try:
        compiled = compile_pipeline(load_pipeline(path), project, pipeline_id=7, first_job_id=7001)
    except InputError as error:
        assert_input_error(error, path)
        return
    for job in compiled.jobs:
        assert job.payload["steps"], job.name


@FAST
@given(data=st.binary(max_size=200) | TEXT.map(str.encode))
def test_pipeline_reader_any_bytes(data: bytes, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / ".gitlab-ci.yml", data)

    try:
        load_pipeline(path)
    except InputError as error:
        assert_input_error(error, path)


# config.toml

DOCKER_KEYS = ["image", "privileged", "volumes", "services", "pull_policy", "helper_image", "network_mode",
               "extra_hosts", "dns", "cache_dir", "disable_cache", "wait_for_services_timeout",
               "allowed_images", "allowed_services", "tls_verify", "host", "memory", "cpus", "shm_size"]
RUNNER_KEYS = ["name", "url", "token", "executor", "builds_dir", "cache_dir", "environment", "limit",
               "output_limit", "pre_build_script", "docker", "kubernetes", "cache", "feature_flags"]
# TOML has no null, so documents for it leave None out.
TOML_SCALARS = st.one_of(st.booleans(), st.integers(-2**40, 2**40),
                         st.floats(allow_nan=False, allow_infinity=False), TEXT)
near_valid_runner = st.fixed_dictionaries(
    {"name": TEXT, "executor": st.sampled_from(["docker", "shell", "kubernetes"]) | TEXT,
     "docker": documents(DOCKER_KEYS, TOML_SCALARS)},
    optional={key: values(scalars=TOML_SCALARS) for key in RUNNER_KEYS if key not in ("name", "executor", "docker")})
runner_configs = st.one_of(
    documents(["concurrent", "check_interval", "runners", "listen_address"], TOML_SCALARS),
    st.fixed_dictionaries({"runners": st.lists(near_valid_runner, min_size=1, max_size=2)},
                          optional={"concurrent": TOML_SCALARS, "check_interval": TOML_SCALARS}),
)


@FAST
@given(document=runner_configs)
def test_runner_config_any_document(document, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(document))

    try:
        config = load_runner_config(path)
    except InputError as error:
        assert_input_error(error, path)
        return
    assert config.runners


@FAST
@given(data=st.binary(max_size=200) | TEXT.map(str.encode))
def test_runner_config_any_bytes(data: bytes, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "config.toml", data)

    try:
        load_runner_config(path)
    except InputError as error:
        assert_input_error(error, path)


# pod manifests

CONTAINER_KEYS = ["name", "image", "command", "args", "env", "volumeMounts", "securityContext", "resources",
                  "ports", "workingDir", "readinessProbe", "stdin", "tty"]
SPEC_KEYS = ["containers", "volumes", "restartPolicy", "terminationGracePeriodSeconds", "hostAliases",
             "initContainers", "hostNetwork", "serviceAccountName"]
near_valid_container = st.fixed_dictionaries(
    {"name": st.sampled_from(["build", "svc-0", "Bad Name"]) | TEXT, "image": st.sampled_from(["busybox"]) | TEXT},
    optional={key: values() for key in CONTAINER_KEYS if key not in ("name", "image")})
pods = st.one_of(
    documents(["apiVersion", "kind", "metadata", "spec"]),
    st.fixed_dictionaries({
        "apiVersion": st.just("v1"), "kind": st.just("Pod"),
        "metadata": st.fixed_dictionaries({"name": st.sampled_from(["job-pod"]) | TEXT},
                                          optional={"labels": values(), "namespace": values()}),
        "spec": st.fixed_dictionaries({"containers": st.lists(near_valid_container, min_size=1, max_size=2)},
                                      optional={key: values() for key in SPEC_KEYS if key != "containers"}),
    }),
)


@FAST
@given(document=pods)
def test_pod_reader_any_document(document, tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))

    try:
        pod = load_pod(path)
    except InputError as error:
        assert_input_error(error, path)
        return
    assert pod.containers


@FAST
@given(data=st.binary(max_size=200) | TEXT.map(str.encode))
def test_pod_reader_any_bytes(data: bytes, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "pod.yaml", data)

    try:
        load_pod(path)
    except InputError as error:
        assert_input_error(error, path)


# scenario folders

# Values for fields that name a path: escapes by "..", absolute paths and links, plus garbage.
PATH_VALUES = st.sampled_from([
    "project", "project/.gitlab-ci.yml", "config.dind.toml", "..", "../seed/config.dind.toml",
    "project/../../outside.yml", "/etc/hostname", "/", "link-out", "link-out/.gitlab-ci.yml",
    "link-in", "project/link-out-file", "", ".", "nul\x00byte", "project/../config.dind.toml",
]) | TEXT
PATH_FIELDS = ["project.path", "modes.dind.pipeline", "modes.dind.runner_config",
               "modes.dood.pipeline", "modes.dood.runner_config"]


def scenario_folder(root: Path) -> Path:
    """Copy the seed scenario under ``root`` and add links that lead out of it and inside it."""
    folder = root / "space" / "seed"
    if folder.exists():
        return folder
    shutil.copytree(SEED, folder, symlinks=True)
    outside = root / "space" / "outside"
    shutil.copytree(SEED / "project", outside)
    (folder / "link-out").symlink_to(outside)
    (folder / "link-in").symlink_to(folder / "project")
    (folder / "project" / "link-out-file").symlink_to(outside / ".gitlab-ci.yml")
    return folder


def set_field(document: dict, dotted: str, value) -> None:
    table = document
    *parents, last = dotted.split(".")
    for name in parents:
        table = table.setdefault(name, {})
    table[last] = value


@pytest.fixture(scope="module")
def seed_copy(tmp_path_factory) -> Path:
    return scenario_folder(tmp_path_factory.mktemp("scenario")).resolve()


@FAST
@given(changes=st.dictionaries(st.sampled_from(PATH_FIELDS), PATH_VALUES, min_size=1, max_size=3))
def test_scenario_path_fields_stay_inside(changes: dict, seed_copy: Path) -> None:
    path = seed_copy / "scenario.toml"
    document = yaml.safe_load(yaml.safe_dump(_seed_document()))
    for field, value in changes.items():
        set_field(document, field, value)
    path.write_text(tomli_w.dumps(document))

    try:
        scenario = load_scenario(seed_copy)
    except InputError as error:
        assert_input_error(error, path)
        return
    named = [scenario.project_dir] + [file for mode in scenario.modes.values()
                                      for file in (mode.pipeline, mode.runner_config)]
    for file in named:
        assert file == seed_copy or seed_copy in file.parents, file
    assert not _links_out(scenario.project_dir, seed_copy)


@FAST
@given(document=documents(["name", "purpose", "reports", "project", "registry", "modes", "watch", "expect"],
                          TOML_SCALARS))
def test_scenario_any_document(document: dict, seed_copy: Path) -> None:
    path = seed_copy / "scenario.toml"
    path.write_text(tomli_w.dumps(document))

    try:
        load_scenario(seed_copy)
    except InputError as error:
        assert_input_error(error, path)


def _seed_document() -> dict:
    import tomllib

    return tomllib.loads((SEED / "scenario.toml").read_text())


def _links_out(directory: Path, folder: Path) -> list[Path]:
    """Return the symbolic links under ``directory`` whose target lies outside ``folder``."""
    found = []
    for link in directory.rglob("*"):
        if link.is_symlink():
            target = link.resolve()
            if target != folder and folder not in target.parents:
                found.append(link)
    return found


# The same inputs through a run: nothing is created on the engine before the error.

@pytest.fixture(scope="module")
def plain_seed_copy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run") / "seed"
    shutil.copytree(SEED, folder, symlinks=True)
    return folder.resolve()


@pytest.mark.engine
@pytest.mark.images
@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(document=pipelines)
def test_run_with_hostile_pipeline_leaves_nothing(document, engine_client, plain_seed_copy: Path) -> None:
    from harness.run import RunOptions, run_scenario

    path = plain_seed_copy / "project" / ".gitlab-ci.yml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    scenario = load_scenario(plain_seed_copy)
    before = _session_resources(engine_client)

    try:
        run_scenario(engine_client, scenario, "dind", RunOptions(jobs=("no-such-job-selected",)))
    except InputError as error:
        assert error.file in (str(path), str(scenario.modes["dind"].runner_config), "command line"), error
        assert_input_error(error, Path(error.file))
        assert _session_resources(engine_client) == before
        return
    # A valid pipeline with a job named "no-such-job-selected" cannot be generated here, so
    # check_inputs always rejects the --job selection at the latest.
    pytest.fail("the run started although no job was selected")


@pytest.mark.engine
@pytest.mark.images
@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(document=runner_configs)
def test_run_with_hostile_config_leaves_nothing(document, engine_client, plain_seed_copy: Path) -> None:
    from harness.run import RunOptions, run_scenario

    (plain_seed_copy / "project" / ".gitlab-ci.yml").write_text((SEED / "project" / ".gitlab-ci.yml").read_text())
    path = plain_seed_copy / "config.dind.toml"
    path.write_text(tomli_w.dumps(document))
    scenario = load_scenario(plain_seed_copy)
    before = _session_resources(engine_client)

    try:
        run_scenario(engine_client, scenario, "dind", RunOptions(jobs=("no-such-job-selected",)))
    except InputError as error:
        assert error.file in (str(path), str(scenario.modes["dind"].pipeline)), error
        assert_input_error(error, Path(error.file))
        assert _session_resources(engine_client) == before
        return
    pytest.fail("the run started although no job was selected")


def _session_resources(client) -> set[str]:
    session = labels.session_filter()
    found = {f"container {c.name}" for c in client.containers.list(all=True, filters=session)}
    found |= {f"network {n.name}" for n in client.networks.list(filters=session)}
    found |= {f"volume {v.name}" for v in client.volumes.list(filters=session)}
    return found
