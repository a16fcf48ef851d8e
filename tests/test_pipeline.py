"""The .gitlab-ci.yml compiler, variable expressions and masking; real git, no Docker engine."""

from __future__ import annotations

import base64
import json
import logging
import re
import textwrap
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.pipeline import (
    CompiledPipeline, Image, Service, compile_pipeline, load_pipeline,
)
from harness.project import Project, git
from harness.variables import ExpressionError, Variable, mask, parse_expression, slugify

SEED = """
image: docker:stable
services:
  - docker:19.03.7-dind
variables:
  DOCKER_HOST: tcp://docker:2375
  DOCKER_TLS_CERTDIR: ""
stages:
  - build
  - test
  - deploy
before_script:
  - docker login -u "$REGISTRY_USER" -p "$REGISTRY_PASSWORD" registry.cn-beijing.aliyuncs.com
BuildImages:
  stage: build
  only:
    - master
  script:
    - docker build -t registry.cn-beijing.aliyuncs.com/group/app:latest .
    - docker push registry.cn-beijing.aliyuncs.com/group/app:latest
TestImage:
  stage: test
  script:
    - docker run --rm registry.cn-beijing.aliyuncs.com/group/app:latest true
  after_script:
    - docker logout registry.cn-beijing.aliyuncs.com
"""


class Workspace:
    """Writes pipelines and creates committed projects under one tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.projects: dict[tuple, Project] = {}

    def write(self, text: str, name: str = ".gitlab-ci.yml") -> Path:
        path = self.tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    def load(self, text: str):
        return load_pipeline(self.write(text))

    def project(self, branch: str = "master", files: dict[str, str] | None = None) -> Project:
        key = (branch, tuple(sorted((files or {}).items())))
        if key not in self.projects:
            source = self.tmp_path / f"source-{len(self.projects)}"
            source.mkdir()
            (source / "README.md").write_text("demo\n")
            for name, text in (files or {}).items():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                (source / name).write_text(text)
            project = Project.from_directory(source, "group", "demo", branch=branch, project_id=42,
                                             work_dir=self.tmp_path / "work")
            self.projects[key] = project.with_default_branch("master")
        return self.projects[key]

    def compile(self, text: str, branch: str = "master", files: dict[str, str] | None = None,
                **options) -> CompiledPipeline:
        return compile_pipeline(self.load(text), self.project(branch, files), **options)

    def error(self, text: str) -> str:
        path = self.write(text)
        with pytest.raises(InputError) as raised:
            load_pipeline(path)
        message = str(raised.value)
        assert "\n" not in message
        return message


@pytest.fixture
def space(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def variables_of(job) -> dict[str, dict]:
    return {entry["key"]: entry for entry in job.payload["variables"]}


def names(compiled: CompiledPipeline) -> list[str]:
    return [job.name for job in compiled.jobs]


# The seed pipeline, end to end.

def test_seed_pipeline_payload_shape(space: Workspace) -> None:
    settings = [Variable("REGISTRY_USER", "robot", public=False),
                Variable("REGISTRY_PASSWORD", "hunter2-secret", masked=True, public=False)]

    compiled = space.compile(SEED, variables=settings, pipeline_id=7, first_job_id=100)

    assert compiled.stages == [".pre", "build", "test", "deploy", ".post"]
    assert names(compiled) == ["BuildImages", "TestImage"]
    build, test = compiled.jobs
    project = space.project()
    payload = build.payload
    assert json.loads(json.dumps(payload)) == payload
    assert set(payload) == {"id", "token", "allow_git_fetch", "job_info", "git_info", "runner_info",
                            "variables", "steps", "image", "services", "artifacts", "cache",
                            "credentials", "dependencies", "features"}
    assert payload["id"] == 100
    assert test.payload["id"] == 101
    assert payload["allow_git_fetch"] is False
    assert payload["job_info"] == {"name": "BuildImages", "stage": "build", "project_id": 42,
                                   "project_name": "demo", "pipeline_id": 7}
    assert payload["git_info"] == {
        "repo_url": f"http://gitlab-ci-token:{build.token}@gitlab.harness.invalid/group/demo.git",
        "ref": "master", "sha": project.sha, "before_sha": project.before_sha,
        "ref_type": "branch", "refspecs": ["+refs/heads/master:refs/remotes/origin/master"],
        "depth": 20, "protected": True,
    }
    assert payload["runner_info"] == {"timeout": 3600}
    assert payload["image"] == {"name": "docker:stable"}
    assert payload["services"] == [{"name": "docker:19.03.7-dind", "alias": "", "command": [],
                                    "entrypoint": [], "variables": []}]
    assert payload["steps"] == [{
        "name": "script",
        "script": [
            'docker login -u "$REGISTRY_USER" -p "$REGISTRY_PASSWORD" registry.cn-beijing.aliyuncs.com',
            "docker build -t registry.cn-beijing.aliyuncs.com/group/app:latest .",
            "docker push registry.cn-beijing.aliyuncs.com/group/app:latest",
        ],
        "timeout": 3600, "when": "on_success", "allow_failure": False,
    }]
    assert test.payload["steps"][1] == {
        "name": "after_script", "script": ["docker logout registry.cn-beijing.aliyuncs.com"],
        "timeout": 3600, "when": "always", "allow_failure": True}
    assert payload["artifacts"] == payload["cache"] == payload["credentials"] == []
    assert payload["dependencies"] == []
    assert payload["features"]["trace_sections"] is True
    assert "script_failure" in payload["features"]["failure_reasons"]


def test_seed_pipeline_variables(space: Workspace) -> None:
    settings = [Variable("REGISTRY_PASSWORD", "hunter2-secret", masked=True)]

    build = space.compile(SEED, variables=settings).job("BuildImages")
    variables = variables_of(build)

    assert variables["DOCKER_HOST"] == {"key": "DOCKER_HOST", "value": "tcp://docker:2375",
                                        "public": True, "masked": False, "file": False, "raw": False}
    assert variables["DOCKER_TLS_CERTDIR"]["value"] == ""
    assert variables["REGISTRY_PASSWORD"]["public"] is False
    assert variables["REGISTRY_PASSWORD"]["masked"] is True
    assert build.masked_values() == [build.token, build.token, "hunter2-secret"]


def test_seed_only_master_skips_feature_branch(space: Workspace) -> None:
    compiled = space.compile(SEED, branch="feature/x")

    assert names(compiled) == ["TestImage"]
    assert compiled.jobs[0].payload["id"] == 1
    assert compiled.jobs[0].payload["git_info"]["protected"] is False


# Predefined variables.

def test_predefined_variables(space: Workspace) -> None:
    project = space.project()
    job = space.compile("Build Images:\n  stage: build\n  script: [echo ok]\n", pipeline_id=9,
                        created_at="2024-05-01T10:00:00Z").jobs[0]
    variables = {key: entry["value"] for key, entry in variables_of(job).items()}

    expected = {
        "CI": "true", "GITLAB_CI": "true", "CI_JOB_ID": "1", "CI_JOB_NAME": "Build Images",
        "CI_JOB_NAME_SLUG": "build-images", "CI_JOB_STAGE": "build", "CI_JOB_TOKEN": job.token,
        "CI_REGISTRY_USER": "gitlab-ci-token", "CI_REGISTRY_PASSWORD": job.token,
        "CI_REPOSITORY_URL": f"http://gitlab-ci-token:{job.token}@gitlab.harness.invalid/group/demo.git",
        "CI_PIPELINE_ID": "9", "CI_PIPELINE_IID": "9", "CI_PIPELINE_SOURCE": "push",
        "CI_PIPELINE_URL": "http://gitlab.harness.invalid/group/demo/-/pipelines/9",
        "CI_PIPELINE_CREATED_AT": "2024-05-01T10:00:00Z",
        "CI_JOB_URL": "http://gitlab.harness.invalid/group/demo/-/jobs/1",
        "CI_PROJECT_ID": "42", "CI_PROJECT_NAME": "demo", "CI_PROJECT_TITLE": "demo",
        "CI_PROJECT_PATH": "group/demo", "CI_PROJECT_PATH_SLUG": "group-demo",
        "CI_PROJECT_NAMESPACE": "group", "CI_PROJECT_ROOT_NAMESPACE": "group",
        "CI_PROJECT_URL": "http://gitlab.harness.invalid/group/demo", "CI_DEFAULT_BRANCH": "master",
        "CI_COMMIT_SHA": project.sha, "CI_COMMIT_SHORT_SHA": project.sha[:8],
        "CI_COMMIT_BEFORE_SHA": "0" * 40, "CI_COMMIT_REF_NAME": "master",
        "CI_COMMIT_REF_SLUG": "master", "CI_COMMIT_BRANCH": "master",
        "CI_COMMIT_MESSAGE": project.commit_message, "CI_COMMIT_TITLE": project.commit_title,
        "CI_COMMIT_TIMESTAMP": project.commit_timestamp,
        "CI_COMMIT_AUTHOR": "Harness <harness@localhost>", "CI_COMMIT_REF_PROTECTED": "true",
        "CI_SERVER_URL": "http://gitlab.harness.invalid", "CI_SERVER_HOST": "gitlab.harness.invalid",
        "CI_SERVER_PORT": "80", "CI_SERVER_PROTOCOL": "http", "CI_SERVER_NAME": "GitLab",
        "CI_API_V4_URL": "http://gitlab.harness.invalid/api/v4", "CI_CONFIG_PATH": ".gitlab-ci.yml",
        "CI_NODE_TOTAL": "1",
    }
    for key, value in expected.items():
        assert variables[key] == value, key
    assert "CI_PROJECT_DIR" not in variables
    assert "CI_REGISTRY" not in variables


@pytest.mark.parametrize(
    ("key", "public", "masked"),
    [("CI_JOB_TOKEN", False, True), ("CI_REGISTRY_PASSWORD", False, True),
     ("CI_REPOSITORY_URL", False, False), ("CI_REGISTRY_USER", True, False),
     ("CI_JOB_ID", True, False), ("CI_COMMIT_SHA", True, False)],
)
def test_predefined_variable_flags(space: Workspace, key: str, public: bool, masked: bool) -> None:
    entry = variables_of(space.compile("job:\n  script: [echo ok]\n").jobs[0])[key]

    assert entry["public"] is public
    assert entry["masked"] is masked


def test_server_url_registry_and_protection(space: Workspace) -> None:
    job = space.compile("job:\n  script: [echo ok]\n", branch="feature/Fix_1",
                        server_url="https://gitlab.harness.invalid:8443/", registry="registry.local:5000",
                        protected=True).jobs[0]
    variables = {key: entry["value"] for key, entry in variables_of(job).items()}

    assert job.payload["git_info"]["repo_url"] == (
        f"https://gitlab-ci-token:{job.token}@gitlab.harness.invalid:8443/group/demo.git")
    assert variables["CI_SERVER_PORT"] == "8443"
    assert variables["CI_SERVER_PROTOCOL"] == "https"
    assert variables["CI_SERVER_FQDN"] == "gitlab.harness.invalid:8443"
    assert variables["CI_REGISTRY"] == "registry.local:5000"
    assert variables["CI_REGISTRY_IMAGE"] == "registry.local:5000/group/demo"
    assert variables["CI_COMMIT_REF_SLUG"] == "feature-fix-1"
    assert variables["CI_COMMIT_REF_PROTECTED"] == "true"
    assert job.payload["git_info"]["refspecs"] == [
        "+refs/heads/feature/Fix_1:refs/remotes/origin/feature/Fix_1"]


def test_job_ids_follow_stage_order_and_tokens_differ(space: Workspace) -> None:
    compiled = space.compile("""
        deploy_job: {stage: deploy, script: [a]}
        test_job: {stage: test, script: [b]}
        build_job: {stage: build, script: [c]}
        pre_job: {stage: .pre, script: [d]}
        """, first_job_id=10)

    assert [(job.name, job.id) for job in compiled.jobs] == [
        ("pre_job", 10), ("build_job", 11), ("test_job", 12), ("deploy_job", 13)]
    assert len({job.token for job in compiled.jobs}) == 4
    assert all(re.fullmatch(r"glcbt-[0-9a-f]{20}", job.token) for job in compiled.jobs)


# Variables: forms and precedence.

def test_variable_precedence(space: Workspace) -> None:
    text = """
        variables:
          CI_PIPELINE_SOURCE: yaml-global
          ORDER: global
          GLOBAL_ONLY: g
        job:
          variables:
            ORDER: job
            JOB_ONLY: j
            JOB_ORDER: job
            SETTING: from-yaml
          rules:
            - if: $JOB_ONLY == "j" && $ORDER == $JOB_ORDER
              variables:
                ORDER: rule
          script: [echo ok]
        """
    settings = [Variable("SETTING", "from-settings"), Variable("JOB_ORDER", "rule-sees-settings"),
                Variable("ORDER", "rule-sees-settings")]
    job = space.compile(text, variables=settings[:1]).jobs[0]
    variables = variables_of(job)

    assert variables["CI_PIPELINE_SOURCE"]["value"] == "yaml-global"
    assert variables["ORDER"]["value"] == "rule"
    assert variables["GLOBAL_ONLY"]["value"] == "g"
    assert variables["JOB_ONLY"]["value"] == "j"
    assert variables["SETTING"] == {"key": "SETTING", "value": "from-settings", "public": False,
                                    "masked": False, "file": False, "raw": False}
    keys = [entry["key"] for entry in job.payload["variables"]]
    assert len(keys) == len(set(keys))
    assert keys.index("CI_JOB_TOKEN") < keys.index("ORDER") < keys.index("SETTING")

    overridden = space.compile(text, variables=settings).jobs[0]
    assert variables_of(overridden)["ORDER"]["value"] == "rule-sees-settings"
    assert variables_of(overridden)["ORDER"]["public"] is False


def test_variable_forms(space: Workspace) -> None:
    job = space.compile("""
        variables:
          NUMBER: 10
          FLOAT: 1.5
          DESCRIBED:
            value: "v"
            description: "shown in the run form"
          LITERAL:
            value: "$NOT_EXPANDED"
            expand: false
        job:
          variables:
            REFERENCE: "$CI_COMMIT_SHA-suffix"
          script: [echo ok]
        """).jobs[0]
    variables = variables_of(job)

    assert variables["NUMBER"]["value"] == "10"
    assert variables["FLOAT"]["value"] == "1.5"
    assert variables["DESCRIBED"]["value"] == "v"
    assert variables["LITERAL"]["raw"] is True
    assert variables["LITERAL"]["value"] == "$NOT_EXPANDED"
    assert variables["REFERENCE"]["value"] == "$CI_COMMIT_SHA-suffix"
    assert variables["NUMBER"]["public"] is True


def test_masked_setting_too_short(space: Workspace) -> None:
    pipeline = space.load("job:\n  script: [echo ok]\n")

    with pytest.raises(InputError) as raised:
        compile_pipeline(pipeline, space.project(), variables=[Variable("PW", "short", masked=True)])

    assert str(raised.value) == ("CI/CD settings variables: PW: a masked value must be a single line "
                                 "of at least 8 characters; use a longer value or do not mask it")


# default:, deprecated globals, inherit.

def test_default_section_applies_to_jobs(space: Workspace) -> None:
    compiled = space.compile("""
        default:
          image: {name: "docker:24.0", entrypoint: [""]}
          services: [{name: "docker:24.0-dind", alias: dind, command: ["--mtu=1400"]}]
          before_script: [echo before]
          after_script: echo after
          timeout: 30m
        plain:
          script: [echo plain]
        own:
          image: alpine:3.19
          before_script: []
          script: [echo own]
        """)
    plain, own = compiled.jobs

    assert plain.payload["image"] == {"name": "docker:24.0", "entrypoint": [""]}
    assert plain.payload["services"][0]["alias"] == "dind"
    assert plain.payload["services"][0]["command"] == ["--mtu=1400"]
    assert plain.payload["steps"][0]["script"] == ["echo before", "echo plain"]
    assert plain.payload["steps"][1]["script"] == ["echo after"]
    assert plain.payload["runner_info"]["timeout"] == 1800
    assert own.payload["image"] == {"name": "alpine:3.19"}
    assert own.payload["steps"][0]["script"] == ["echo own"]


def test_no_image_anywhere(space: Workspace) -> None:
    job = space.compile("job:\n  script: [echo ok]\n").jobs[0]

    assert job.payload["image"] == {"name": ""}
    assert job.payload["services"] == []
    assert len(job.payload["steps"]) == 1


def test_inherit_limits_defaults_and_variables(space: Workspace) -> None:
    compiled = space.compile("""
        default:
          image: docker:24.0
          before_script: [echo before]
        variables:
          A: a
          B: b
        none:
          inherit: {default: false, variables: false}
          script: [echo ok]
        some:
          inherit: {default: [image], variables: [B]}
          script: [echo ok]
        """)
    none, some = compiled.jobs

    assert none.payload["image"] == {"name": ""}
    assert none.payload["steps"][0]["script"] == ["echo ok"]
    assert "A" not in variables_of(none)
    assert some.payload["image"] == {"name": "docker:24.0"}
    assert some.payload["steps"][0]["script"] == ["echo ok"]
    assert "A" not in variables_of(some)
    assert variables_of(some)["B"]["value"] == "b"


def test_global_and_default_conflict(space: Workspace) -> None:
    message = space.error("image: a\ndefault:\n  image: b\njob:\n  script: [x]\n")

    assert message.endswith(": image: image is set both at the top level and under default:; "
                            "keep only default.image")


# Images and services.

def test_service_mapping_payload(space: Workspace) -> None:
    job = space.compile("""
        job:
          image:
            name: docker:24.0
            entrypoint: ["/bin/sh", "-c"]
            pull_policy: if-not-present
            docker: {platform: linux/amd64, user: "1000"}
          services:
            - name: registry.local:5000/docker:dind
              alias: dind, docker
              entrypoint: ["dockerd-entrypoint.sh"]
              command: ["--tls=false"]
              variables:
                DOCKER_TLS_CERTDIR: ""
            - postgres
          script: [echo ok]
        """).jobs[0]

    assert job.payload["image"] == {"name": "docker:24.0", "entrypoint": ["/bin/sh", "-c"],
                                    "pull_policy": ["if-not-present"],
                                    "executor_opts": {"docker": {"platform": "linux/amd64", "user": "1000"}}}
    assert job.payload["services"] == [
        {"name": "registry.local:5000/docker:dind", "alias": "dind, docker",
         "entrypoint": ["dockerd-entrypoint.sh"], "command": ["--tls=false"],
         "variables": [{"key": "DOCKER_TLS_CERTDIR", "value": "", "public": True, "masked": False,
                        "file": False, "raw": False}]},
        {"name": "postgres", "alias": "", "command": [], "entrypoint": [], "variables": []},
    ]


def test_job_image_helpers(space: Workspace) -> None:
    pipeline = space.load("job:\n  image: alpine\n  services: [docker:dind, {name: redis}]\n  script: [x]\n")

    assert pipeline.jobs[0].image == Image("alpine")
    assert pipeline.jobs[0].image_name == "alpine"
    assert pipeline.jobs[0].service_images == ("docker:dind", "redis")
    assert pipeline.jobs[0].services[1] == Service("redis")


# Scripts.

def test_script_forms(space: Workspace) -> None:
    job = space.compile("""
        .common: &common
          - echo one
          - [echo two, [echo three]]
        job:
          before_script: echo zero
          script:
            - *common
            - |
              multi
              line
        """).jobs[0]

    assert job.payload["steps"][0]["script"] == ["echo zero", "echo one", "echo two", "echo three",
                                                 "multi\nline\n"]


# only / except.

ONLY_CASES = [
    ("only: [master]", "master", True),
    ("only: [master]", "main", False),
    ("only: [master]", "master-old", False),
    ("only: [/feature/]", "bugfix/feature-x", True),
    ("only: master", "master", True),
    ("only: [/^feature\\//]", "feature/x", True),
    ("only: [/^feature\\//]", "bugfix/feature/x", False),
    ("only: [/^FEATURE/i]", "feature/x", True),
    ("only: [branches]", "anything", True),
    ("only: [tags]", "master", False),
    ("only: [pushes]", "master", True),
    ("only: [schedules, web]", "master", False),
    ("only: [group/demo@master]", "master", True),
    ("only: [other/project@master]", "master", False),
    ("except: [master]", "master", False),
    ("except: [master]", "dev", True),
    ("except: [/^dev/]", "develop", False),
    ("only: [/^re/]\n  except: [release]", "release", False),
    ("only: [/^re/]\n  except: [release]", "rebase", True),
    ("only: {refs: [master], variables: ['$FLAG == \"on\"']}", "master", True),
    ("only: {refs: [master], variables: ['$FLAG == \"off\"']}", "master", False),
    ("only: {variables: ['$FLAG == \"off\"', '$CI_COMMIT_BRANCH == \"dev\"']}", "dev", True),
    ("except: {variables: [$FLAG]}", "master", False),
    ("except: {refs: [dev], variables: [$FLAG]}", "master", True),
    ("when: never", "master", False),
    ("when: manual", "master", True),
]


@pytest.mark.parametrize(("clause", "branch", "created"), ONLY_CASES)
def test_only_except(space: Workspace, clause: str, branch: str, created: bool) -> None:
    text = f"variables:\n  FLAG: \"on\"\njob:\n  {clause}\n  script: [echo ok]\n"

    compiled = space.compile(text, branch=branch)

    assert names(compiled) == (["job"] if created else [])


def test_changes_on_first_push_match(space: Workspace) -> None:
    text = "job:\n  only: {changes: [docs/**/*.md]}\n  script: [echo ok]\n"

    assert names(space.compile(text)) == ["job"]


def test_changes_use_commit_diff(space: Workspace, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docs" / "guide").mkdir(parents=True)
    (repo / "README.md").write_text("x\n")
    git(repo, "init", "--quiet", "--initial-branch=master")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "First")
    (repo / "docs" / "guide" / "a.md").write_text("doc\n")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "Docs")
    project = Project.from_directory(repo, "group", "demo", branch="master")
    pipeline = space.load("""
        docs:
          only: {changes: [docs/**/*.md]}
          script: [echo docs]
        code:
          rules:
            - changes: [src/**/*, "*.py"]
          script: [echo code]
        any_markdown:
          rules:
            - changes: {paths: ["**/*.md"]}
          script: [echo md]
        """)

    compiled = compile_pipeline(pipeline, project)

    assert names(compiled) == ["docs", "any_markdown"]


# rules.

RULE_CASES = [
    ("- if: $CI_COMMIT_BRANCH == \"master\"", "master", ("on_success", False)),
    ("- if: $CI_COMMIT_BRANCH == \"master\"", "dev", None),
    ("- if: $CI_COMMIT_BRANCH != \"master\"", "dev", ("on_success", False)),
    ("- if: $CI_COMMIT_BRANCH =~ /^feat/", "feature", ("on_success", False)),
    ("- if: $CI_COMMIT_BRANCH !~ /^feat/", "feature", None),
    ("- if: $FLAG && $CI_PIPELINE_SOURCE == \"push\"", "master", ("on_success", False)),
    ("- if: $MISSING || $CI_DEFAULT_BRANCH == $CI_COMMIT_BRANCH", "master", ("on_success", False)),
    ("- if: ($MISSING || $FLAG) && $CI_COMMIT_BRANCH == \"dev\"", "master", None),
    ("- if: $FLAG == \"on\"\n      when: never\n    - when: always", "master", None),
    ("- if: $MISSING\n      when: never\n    - when: always", "master", ("always", False)),
    ("- if: $FLAG\n      when: manual", "master", ("manual", False)),
    ("- if: $FLAG\n      when: manual\n      allow_failure: true", "master", ("manual", True)),
    ("- if: $FLAG\n      allow_failure: true", "master", ("on_success", True)),
    ("- when: on_failure", "master", ("on_failure", False)),
    ("- exists: [Dockerfile]", "master", ("on_success", False)),
    ("- exists: [docker/*.yml]", "master", None),
    ("- exists: ['**/*.yml']", "master", ("on_success", False)),
    ("- exists: ['{Dockerfile,Makefile}']", "master", ("on_success", False)),
    ("- changes: [src/**/*]", "master", ("on_success", False)),
    ("- if: $FLAG\n      exists: [missing.txt]", "master", None),
    ("[]", "master", None),
]


@pytest.mark.parametrize(("rules", "branch", "outcome"), RULE_CASES)
def test_rules(space: Workspace, rules: str, branch: str, outcome: tuple | None) -> None:
    text = f"variables:\n  FLAG: \"on\"\njob:\n  rules:\n    {rules}\n  script: [echo ok]\n"
    files = {"Dockerfile": "FROM scratch\n", "deploy/compose.yml": "services: {}\n"}

    compiled = space.compile(text, branch=branch, files=files)

    if outcome is None:
        assert names(compiled) == []
    else:
        assert [(job.when, job.allow_failure) for job in compiled.jobs] == [outcome]


def test_rules_see_job_variables_not_rule_variables(space: Workspace) -> None:
    compiled = space.compile("""
        job:
          variables: {MODE: fast}
          rules:
            - if: $MODE == "fast"
              variables: {MODE: slow, EXTRA: "1"}
            - when: never
          script: [echo ok]
        later:
          rules:
            - if: $EXTRA
          script: [echo ok]
        """)

    assert names(compiled) == ["job"]
    assert variables_of(compiled.jobs[0])["MODE"]["value"] == "slow"
    assert variables_of(compiled.jobs[0])["EXTRA"]["value"] == "1"


def test_rules_see_settings_variables(space: Workspace) -> None:
    text = "job:\n  rules:\n    - if: $DEPLOY == \"yes\"\n  script: [echo ok]\n"

    assert names(space.compile(text, variables=[Variable("DEPLOY", "yes")])) == ["job"]
    assert names(space.compile(text, variables=[Variable("DEPLOY", "no")])) == []


@pytest.mark.parametrize(
    ("job_keys", "expected"),
    [
        ("when: manual\n  rules:\n    - if: $CI", ("manual", True)),
        ("when: manual\n  allow_failure: false\n  rules:\n    - if: $CI", ("manual", False)),
        ("allow_failure: true\n  rules:\n    - if: $CI\n      when: manual", ("manual", True)),
        ("when: manual", ("manual", True)),
        ("when: manual\n  allow_failure: false", ("manual", False)),
        ("allow_failure: {exit_codes: [137, 255]}", ("on_success", False)),
        ("when: always\n  allow_failure: true", ("always", True)),
    ],
)
def test_when_and_allow_failure_defaults(space: Workspace, job_keys: str, expected: tuple) -> None:
    job = space.compile(f"job:\n  {job_keys}\n  script: [echo ok]\n").jobs[0]

    assert (job.when, job.allow_failure) == expected


def test_allow_failure_exit_codes(space: Workspace) -> None:
    job = space.compile("job:\n  allow_failure: {exit_codes: 137}\n  script: [echo ok]\n").jobs[0]

    assert job.allow_failure_exit_codes == (137,)


# workflow:rules.

@pytest.mark.parametrize(
    ("workflow", "branch", "jobs"),
    [
        ("- if: $CI_COMMIT_BRANCH == \"master\"", "master", ["job"]),
        ("- if: $CI_COMMIT_BRANCH == \"master\"", "dev", []),
        ("- if: $CI_COMMIT_BRANCH == \"dev\"\n      when: never\n    - when: always", "dev", []),
        ("- when: always", "dev", ["job"]),
    ],
)
def test_workflow_rules(space: Workspace, workflow: str, branch: str, jobs: list[str]) -> None:
    text = f"workflow:\n  rules:\n    {workflow}\njob:\n  script: [echo ok]\n"

    compiled = space.compile(text, branch=branch)

    assert names(compiled) == jobs
    assert compiled.stages == [".pre", "build", "test", "deploy", ".post"]


def test_workflow_rule_variables_reach_jobs(space: Workspace) -> None:
    job = space.compile("""
        variables: {TARGET: global}
        workflow:
          rules:
            - if: $CI_COMMIT_BRANCH
              variables: {TARGET: workflow}
        job:
          rules:
            - if: $TARGET == "workflow"
          script: [echo ok]
        """).jobs[0]

    assert variables_of(job)["TARGET"]["value"] == "workflow"


# extends, !reference, anchors.

def test_extends_deep_merge(space: Workspace) -> None:
    job = space.compile("""
        .base:
          image: docker:24.0
          variables: {A: base, B: base}
          script: [echo base]
          tags: [docker]
        .second:
          variables: {B: second, C: second}
          before_script: [echo second]
        job:
          extends: [.base, .second]
          variables: {C: job}
          script: [echo job]
        """).jobs[0]
    variables = variables_of(job)

    assert job.payload["image"] == {"name": "docker:24.0"}
    assert (variables["A"]["value"], variables["B"]["value"], variables["C"]["value"]) == (
        "base", "second", "job")
    assert job.payload["steps"][0]["script"] == ["echo second", "echo job"]


def test_extends_chain_and_visible_parent(space: Workspace) -> None:
    compiled = space.compile("""
        .a: {stage: build, script: [a]}
        .b: {extends: .a, variables: {X: b}}
        parent: {extends: .b, script: [p]}
        child: {extends: parent, stage: deploy}
        """)

    assert names(compiled) == ["parent", "child"]
    assert compiled.job("child").stage == "deploy"
    assert compiled.job("child").payload["steps"][0]["script"] == ["p"]
    assert variables_of(compiled.job("child"))["X"]["value"] == "b"


def test_reference_tags(space: Workspace) -> None:
    job = space.compile("""
        .setup:
          script: [echo setup, echo more]
          variables: {URL: "http://x.invalid"}
        .template:
          extends: .setup
        job:
          variables: !reference [.template, variables]
          script:
            - !reference [.template, script]
            - echo job
        """).jobs[0]

    assert job.payload["steps"][0]["script"] == ["echo setup", "echo more", "echo job"]
    assert variables_of(job)["URL"]["value"] == "http://x.invalid"


def test_yaml_anchors_and_merge_keys(space: Workspace) -> None:
    job = space.compile("""
        .defaults: &defaults
          stage: build
          variables: {A: anchor}
        job:
          <<: *defaults
          script: [echo ok]
        """).jobs[0]

    assert job.stage == "build"
    assert variables_of(job)["A"]["value"] == "anchor"


def test_custom_stages(space: Workspace) -> None:
    compiled = space.compile("""
        stages: [lint, .pre, package, lint]
        a: {stage: package, script: [x]}
        b: {stage: lint, script: [x]}
        c: {stage: .post, script: [x]}
        """)

    assert compiled.stages == [".pre", "lint", "package", ".post"]
    assert names(compiled) == ["b", "a", "c"]


# Warnings.

def test_ignored_keys_warn(space: Workspace, caplog) -> None:
    path = space.write("""
        cache: {paths: [x]}
        default:
          retry: 2
        job:
          script: [echo ok]
          artifacts: {paths: [out]}
          services: [{name: x, kubernetes: {user: 1}}]
          rules:
            - if: $X
              needs: [other]
        """)

    with caplog.at_level(logging.WARNING, logger="harness"):
        pipeline = load_pipeline(path)

    # Catches a documented ignore turned into an error, or ignored without telling the user.
    assert pipeline.warnings == (
        f"{path}: cache: is not compiled by the harness and has no effect",
        f"{path}: default.retry: is not compiled by the harness and has no effect",
        f"{path}: job.artifacts: is not compiled by the harness and has no effect",
        f"{path}: job.services[0].kubernetes: is not compiled by the harness and has no effect",
        f"{path}: job.rules[0].needs: is not compiled by the harness and has no effect",
    )
    assert [record.getMessage() for record in caplog.records] == list(pipeline.warnings)
    assert all(record.levelno == logging.WARNING for record in caplog.records)


# Unknown keys: an error at every level, with the closest known key as the fix.

UNKNOWN_KEY_CASES = [
    ("job: {scirpt: [oops], script: [x]}", "job.scirpt", "did you mean `script`?"),
    ("job: {scriptt: [oops]}", "job.scriptt", "did you mean `script`?"),
    ("job: {script: [x], servics: [docker:dind]}", "job.servics", "did you mean `services`?"),
    ("job: {script: [x], artifcats: {paths: [a]}}", "job.artifcats", "did you mean `artifacts`?"),
    ("job: {script: [x], colour: red}", "job.colour", "remove it or use one of: after_script, "),
    ("job:\n  services: [{name: x, aliass: y}]\n  script: [x]\n", "job.services[0].aliass",
     "did you mean `alias`?"),
    ("job:\n  image: {name: x, entrypont: [\"\"]}\n  script: [x]\n", "job.image.entrypont",
     "did you mean `entrypoint`?"),
    ("job:\n  image: {name: x, docker: {platfrom: arm64}}\n  script: [x]\n", "job.image.docker.platfrom",
     "did you mean `platform`?"),
    ("variables:\n  V: {value: x, expnad: false}\njob: {script: [x]}", "variables.V.expnad",
     "did you mean `expand`?"),
    ("default:\n  imgae: x\njob: {script: [x]}", "default.imgae", "did you mean `image`?"),
    ("workflow:\n  rulse: []\njob: {script: [x]}", "workflow.rulse", "did you mean `rules`?"),
    ("job:\n  inherit: {defaults: false}\n  script: [x]\n", "job.inherit.defaults",
     "did you mean `default`?"),
    ("job:\n  rules: [{if: $X, whne: never}]\n  script: [x]\n", "job.rules[0].whne",
     "did you mean `when`?"),
    ("job:\n  rules: [{exists: {path: [a]}}]\n  script: [x]\n", "job.rules[0].exists.path",
     "did you mean `paths`?"),
    ("job:\n  only: {ref: [main]}\n  script: [x]\n", "job.only.ref", "did you mean `refs`?"),
    ("stagse: [build]\njob: {script: [x]}", "stagse", "did you mean `stages`?"),
    ("variabels: {A: b}\njob: {script: [x]}", "variabels", "did you mean `variables`?"),
]


@pytest.mark.parametrize(("text", "key", "fix"), UNKNOWN_KEY_CASES, ids=[case[1] for case in UNKNOWN_KEY_CASES])
def test_unknown_key_rejected(space: Workspace, text: str, key: str, fix: str) -> None:
    message = space.error(text)

    # Catches an unknown key that is warned about or dropped, and a fix that does not name the key.
    path = space.tmp_path / ".gitlab-ci.yml"
    assert message.startswith(f"{path}: {key}: unknown "), message
    assert f"; {fix}" in message, message


def test_misspelled_global_with_script_is_job(space: Workspace) -> None:
    # A mapping with script: is a job whatever its name, as in GitLab.
    pipeline = load_pipeline(space.write("stagse: {script: [x]}"))

    assert [job.name for job in pipeline.jobs] == ["stagse"]


# Errors: one line with file, key path and fix.

ERROR_CASES = [
    ("include: [other.yml]\njob: {script: [x]}", "include",
     ["include: is not supported", "copy the included jobs"]),
    ("job:\n  stage: build\n", "job.script", ["missing script", "add script:"]),
    ("job: {trigger: other/project}", "job.trigger", ["trigger jobs are not supported"]),
    ("job:\n  stage: lint\n  script: [x]\n", "job.stage",
     ['stage "lint" is not defined in stages (.pre, build, test, deploy, .post)', 'add "lint" to stages:']),
    ("BuildImages:\n  services: [docker:dind, {name: x, alias: [a]}]\n  script: [x]\n",
     "BuildImages.services[1].alias", ["expected a string, got a list"]),
    ("job:\n  services: [{alias: a}]\n  script: [x]\n", "job.services[0].name",
     ["missing image name", "add name:"]),
    ("job:\n  services: docker:dind\n  script: [x]\n", "job.services",
     ["expected a list, got a string", "write services: as a list"]),
    ("job:\n  services: [{name: d, command: --tls=false}]\n  script: [x]\n", "job.services[0].command",
     ["expected a list, got a string", 'for example ["--mtu=1400"]']),
    ("job:\n  image: {name: d, entrypoint: /bin/sh}\n  script: [x]\n", "job.image.entrypoint",
     ["expected a list, got a string"]),
    ("job:\n  image: {entrypoint: [\"\"]}\n  script: [x]\n", "job.image.name", ["missing image name"]),
    ("job:\n  image: \"\"\n  script: [x]\n", "job.image", ["the image name is empty"]),
    ("job:\n  image: {name: d, pull_policy: sometimes}\n  script: [x]\n", "job.image.pull_policy",
     ['unknown pull policy "sometimes"']),
    ("job:\n  variables: {FLAG: true}\n  script: [x]\n", "job.variables.FLAG",
     ["must be a string or a number, got a boolean", 'quote the value, for example "true"']),
    ("variables:\n  EMPTY:\njob: {script: [x]}", "variables.EMPTY",
     ["got null", 'for example ""']),
    ("variables: [A]\njob: {script: [x]}", "variables", ["expected a mapping, got a list"]),
    ("variables:\n  V: {value: x, expand: \"no\"}\njob: {script: [x]}", "variables.V.expand",
     ["expected true or false, got a string"]),
    ("job:\n  script:\n    - echo a: b\n", "job.script[0]",
     ["expected a command string, got a mapping", 'an unquoted ": " makes YAML read a mapping']),
    ("job:\n  script: []\n", "job.script", ["the script is empty"]),
    ("job:\n  script: [1]\n", "job.script[0]", ["expected a command string, got an integer"]),
    ("job:\n  when: sometimes\n  script: [x]\n", "job.when",
     ['unknown value "sometimes"', "on_success, on_failure, always, manual, never"]),
    ("job:\n  when: delayed\n  script: [x]\n", "job.when", ["when: delayed is not supported"]),
    ("job:\n  allow_failure: maybe\n  script: [x]\n", "job.allow_failure",
     ["expected true, false or exit_codes", "exit_codes: [137]"]),
    ("job:\n  timeout: soon\n  script: [x]\n", "job.timeout", ["invalid timeout 'soon'"]),
    ("job:\n  timeout: 3 fortnights\n  script: [x]\n", "job.timeout", ['unknown time unit "fortnights"']),
    ("job:\n  rules: {if: $X}\n  script: [x]\n", "job.rules", ["expected a list, got a mapping"]),
    ("job:\n  rules:\n    - if: $X = \"a\"\n  script: [x]\n", "job.rules[0].if",
     ["invalid expression", "cannot parse"]),
    ("job:\n  rules:\n    - if: $X\n      when: sometimes\n  script: [x]\n", "job.rules[0].when",
     ['unknown value "sometimes"']),
    ("job:\n  rules: [{if: $X}]\n  only: [master]\n  script: [x]\n", "job.rules",
     ["rules cannot be used together with only or except"]),
    ("job:\n  only: [\"/[/\"]\n  script: [x]\n", "job.only[0]", ["invalid regular expression"]),
    ("job:\n  only: {variables: [\"$X ==\"]}\n  script: [x]\n", "job.only.variables[0]",
     ["invalid expression"]),
    ("job:\n  extends: .missing\n  script: [x]\n", "job.extends", ['unknown job ".missing"']),
    (".a: {extends: .b}\n.b: {extends: .a}\njob: {extends: .a, script: [x]}", ".b.extends",
     ['circular extends through ".a"']),
    ("job: {extends: [1], script: [x]}", "job.extends[0]", ["expected a string, got an integer"]),
    ("job:\n  script: !reference [.nope, script]\n", "job.script",
     ["!reference ['.nope', 'script'] on line 2 points at nothing"]),
    ("workflow:\n  rules: [{when: manual}]\njob: {script: [x]}", "workflow.rules[0].when",
     ['"manual" is not allowed here', "use always or never"]),
    ("job: [script]", "job", ["a job must be a mapping, got a list"]),
    (".hidden: {script: [x]}", "", ["the file defines no visible job"]),
    ("job:\n  inherit: {default: maybe}\n  script: [x]\n", "job.inherit.default",
     ["expected a list, got a string", "true, false or a list of names"]),
    ("stages: build\njob: {script: [x]}", "stages", ["expected a list, got a string"]),
]


@pytest.mark.parametrize(("text", "key", "fragments"), ERROR_CASES)
def test_pipeline_errors(space: Workspace, text: str, key: str, fragments: list[str]) -> None:
    message = space.error(text)

    path = space.tmp_path / ".gitlab-ci.yml"
    prefix = f"{path}: {key}: " if key else f"{path}: "
    assert message.startswith(prefix), message
    assert "; " in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("job:\n  script: [x\n", "line 3"),
        ("job:\n  script: x\n bad: y\n", "line 3"),
        ("job:\n\tscript: x\n", "line 2"),
        ("job: {script: [x]}\nother: !unknown [x]\n", "line 2"),
    ],
)
def test_malformed_yaml_is_one_line(space: Workspace, text: str, line: str) -> None:
    message = space.error(text)

    assert message.startswith(f"{space.tmp_path / '.gitlab-ci.yml'}: {line}: invalid YAML: ")
    assert "column" in message
    assert message.endswith("; fix the indentation or quoting on that line")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_document_must_be_mapping(space: Workspace, text: str) -> None:
    message = space.error(text)

    assert "the file does not contain a mapping of jobs" in message


def test_missing_pipeline_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as raised:
        load_pipeline(tmp_path / "missing.yml")

    assert str(raised.value) == (f"{tmp_path / 'missing.yml'}: file not found; "
                                 "pass the path of the project's .gitlab-ci.yml")


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("1h 30m", 5400), ("1h30m", 5400),
                                                ("2 hours", 7200), ("10 minutes", 600), ("1d", 86400)])
def test_timeout_formats(space: Workspace, text: str, seconds: int) -> None:
    job = space.compile(f"job:\n  timeout: {text}\n  script: [x]\n").jobs[0]

    assert job.payload["runner_info"]["timeout"] == seconds
    assert job.payload["steps"][0]["timeout"] == seconds


def test_compile_for_missing_branch(space: Workspace) -> None:
    pipeline = space.load("job: {script: [x]}")

    with pytest.raises(InputError, match='no branch "nope"'):
        compile_pipeline(pipeline, space.project(), branch="nope")


# Variable expressions.

ENVIRONMENT = {"A": "x", "EMPTY": "", "PATTERN": "/^fea/", "SLASH": "a/b"}
EXPRESSIONS = [
    ("$A", True), ("$EMPTY", False), ("$MISSING", False), ("${A}", True),
    ('$A == "x"', True), ("$A == 'x'", True), ('$A=="x"', True), ('$A == "y"', False),
    ('$A != "y"', True), ('"x" == $A', True),
    ("$MISSING == null", True), ("$EMPTY == null", False), ('$EMPTY == ""', True),
    ('$MISSING == ""', False), ("$A == $A", True), ("$A == $EMPTY", False),
    ("$A =~ /^X$/i", True), ("$A =~ /^y/", False), ("$A !~ /^y/", True),
    ('"feature" =~ $PATTERN', True), ('"bugfix" =~ $PATTERN', False), ('"x" =~ $A', False),
    (r"$SLASH =~ /a\/b/", True),
    ('$A == "x" && $EMPTY', False), ('$A == "y" || $A == "x"', True),
    ('$A == "y" || $A == "x" && $EMPTY', False), ('($A == "y" || $A == "x") && $A', True),
    ('$MISSING || ($A && ($EMPTY || "z"))', True),
]


@pytest.mark.parametrize(("text", "expected"), EXPRESSIONS)
def test_expression_evaluation(text: str, expected: bool) -> None:
    assert parse_expression(text).evaluate(ENVIRONMENT) is expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "the expression is empty"), ("   ", "the expression is empty"),
     ("$A ==", "ends where a value is expected"), ("($A", "a parenthesis is not closed"),
     ('$A = "x"', "cannot parse"), ('"open', "cannot parse"), ("$A == /[/", "invalid regular expression"),
     ("$A $B", "unexpected 'B'"), ("== $A", "unexpected '=='")],
)
def test_expression_errors(text: str, problem: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(problem)):
        parse_expression(text)


# Masking.

def test_mask_plain_base64_and_url_forms() -> None:
    secret = "p@ss word+x"
    text = (f"login {secret} auth {base64.b64encode(secret.encode()).decode()} "
            "url https://u:p%40ss%20word%2Bx@host")

    masked = mask(text, [secret])

    assert masked == "login [MASKED] auth [MASKED] url https://u:[MASKED]@host"


def test_mask_longest_first_and_empty() -> None:
    assert mask("abcdefghij and abcdefgh", ["abcdefgh", "abcdefghij", ""]) == "[MASKED] and [MASKED]"
    assert mask("nothing secret", []) == "nothing secret"


def test_mask_user_password_combination() -> None:
    combined = base64.b64encode(b"robot:hunter2-secret").decode()

    assert mask(f'{{"auth": "{combined}"}}', ["robot:hunter2-secret"]) == '{"auth": "[MASKED]"}'


@pytest.mark.parametrize("prefix", ["", "u:", "ci-1:", "robot:", "ci-0a1b2c3d:"])
def test_mask_password_inside_base64_auth(prefix: str) -> None:
    password = "hunter2-secret-value"
    auth = base64.b64encode(f"{prefix}{password}".encode()).decode()

    masked = mask(f'{{"auth": "{auth}"}}', [password])

    visible = masked.removeprefix('{"auth": "').removesuffix('"}')
    assert "[MASKED]" in visible
    # What remains is the prefix's own characters plus at most two mixed ones and padding per side.
    assert len(visible.replace("[MASKED]", "")) <= len(base64.b64encode(prefix.encode())) + 4


def test_mask_short_secret_base64_not_embedded() -> None:
    # An embedded base64 form of a 5-byte secret has 6 characters, too few to match safely.
    auth = base64.b64encode(b"user:abcde").decode()

    assert mask(auth, ["abcde"]) == auth


@pytest.mark.parametrize(("text", "slug"), [("Feature/Fix_1", "feature-fix-1"), ("-x-", "x"),
                                             ("a" * 70, "a" * 63), ("group/demo", "group-demo")])
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_variable_payload_round_trip() -> None:
    variable = Variable("K", "v", masked=True, public=False, file=True, raw=True)

    assert Variable.from_payload(variable.to_payload()) == variable
    # The runner reads a missing flag as false (Go zero value), so services would not get it.
    assert Variable.from_payload({"key": "K", "value": "v"}) == Variable("K", "v", public=False)


def test_alias_bomb_rejected(space: Workspace) -> None:
    # Nine levels of ten aliases each expand to a billion script lines.
    levels = ['a0: &a0 ["echo lol"]'] + [f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]"
                                         for level in range(1, 10)]

    message = space.error("\n".join(levels) + "\njob:\n  script: *a8\n")

    # Catches a reader that expands the aliases, which would not finish, instead of counting them.
    assert message.startswith(f"{space.tmp_path / '.gitlab-ci.yml'}: the file expands to more than "), message
