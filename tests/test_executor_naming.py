"""Names, aliases and labels of the docker executor against GitLab Runner's documented examples."""

from __future__ import annotations

import re

import pytest

from harness.executor import naming
from harness.executor.compat import RunnerCompat
from harness.executor.runner_labels import Labeler, go_duration, project_url
from harness.executor.services import ServiceDefinition, assign_aliases
from harness.executor.trace import Trace
from harness.executor.volumes import parse_volume, is_host_mounted

TOKEN = "glrt-t1_abcdefghijk"


@pytest.mark.parametrize(
    ("path", "digest"),
    [
        ("/cache", "3c3f060a0374fc8bc39395164f415a70"),
        ("/builds", "c33bcaa1fd2c77edfc3893b41966cea8"),
        ("/certs/client", "904f6ed42e0fa2b14c1d7a2ed6f1875e"),
        ("/volume", "14331bf18c8e434c4b3f48a8c5cc79aa"),
    ],
)
def test_path_hash_matches_runner(path, digest):
    assert naming.path_hash(path) == digest


@pytest.mark.parametrize(
    ("token", "legacy", "short"),
    [
        ("glrt-t1_abcdefghijk", False, "abcdefghi"),
        ("glrt-abcdefghijklmn", False, "abcdefghi"),
        ("t2_abcdefghijklmn", False, "abcdefghi"),
        ("glcbt-abcdefghijklmn", False, "abcdefghi"),
        ("GR1348941abcdefghijklmn", False, "abcdefghi"),
        ("glrt-abcdefghijklmn", True, "abcdefghi"),
        ("GR1348941abcdefghijklmn", True, "GR1348941abcdefgh"),
        ("plaintokenvalue", True, "plaintok"),
    ],
)
def test_short_token(token, legacy, short):
    assert naming.short_token(token, legacy=legacy) == short


def test_project_unique_name():
    assert naming.project_unique_name("abcdefghi", 42, 0) == "runner-abcdefghi-project-42-concurrent-0"


def test_rfc1123_treatment():
    assert naming.make_rfc1123_compatible("--Runner_ABC.def") == "runnerabcdef"
    assert len(naming.make_rfc1123_compatible("a" * 80)) == 63


def test_random_prefix_and_containers():
    unique = naming.project_unique_name("abcdefghi", 42, 0)
    prefix = naming.random_prefix(unique)
    assert re.fullmatch(r"runner-abcdefghi-project-42-concurrent-0-[0-9a-f]{16}", prefix)
    assert naming.build_container_name(prefix) == f"{prefix}-build"
    assert naming.predefined_container_name(prefix) == f"{prefix}-predefined"
    assert naming.service_container_name(prefix, "docker", 0) == f"{prefix}-docker-0"
    assert naming.health_check_container_name(f"{prefix}-docker-0") == f"{prefix}-docker-0-wait-for-service"
    assert naming.random_prefix(unique) != prefix


def test_network_names():
    assert naming.network_name("abcdefghi", 42, 0, 1234) == "runner-abcdefghi-42-0-1234"
    legacy = naming.network_name("abcdefghi", 42, 0, 1234, legacy=True)
    assert legacy == "runner-abcdefghi-project-42-concurrent-0-job-1234-network"


def test_cache_volume_names():
    real = naming.project_real_unique_name(TOKEN, "s_000000000000", 42, 0)
    assert re.fullmatch(r"runner-[0-9a-f]{32}", real)
    assert naming.cache_volume_name(real, "/cache") == f"{real}-cache-3c3f060a0374fc8bc39395164f415a70"
    assert naming.cache_volume_name(real, "/cache", protected=True).endswith("-protected")
    legacy = naming.cache_volume_name("runner-abcdefghi-project-42-concurrent-0", "/cache")
    assert legacy == "runner-abcdefghi-project-42-concurrent-0-cache-3c3f060a0374fc8bc39395164f415a70"


def test_temporary_builds_volume_name():
    prefix = "runner-abcdefghi-project-42-concurrent-0-0123456789abcdef"
    assert naming.cache_volume_name(prefix, "/builds") == f"{prefix}-cache-c33bcaa1fd2c77edfc3893b41966cea8"


def test_cache_dir_bind_source():
    source = naming.cache_dir_bind_source("/srv/cache", "runner-x", "/cache", protected=True)
    assert source == "/srv/cache/runner-x/3c3f060a0374fc8bc39395164f415a70-protected"


@pytest.mark.parametrize(
    ("description", "aliases", "image"),
    [
        ("docker:19.03.7-dind", ("docker",), "docker:19.03.7-dind"),
        ("postgres", ("postgres",), "postgres:latest"),
        ("namespace/service:v", ("namespace__service", "namespace-service"), "namespace/service:v"),
        ("registry.example.com/group/img:tag",
         ("registry.example.com__group__img", "registry.example.com-group-img"), "registry.example.com/group/img:tag"),
        ("registry.example.com:4999/valkey/valkey",
         ("registry.example.com__valkey__valkey", "registry.example.com-valkey-valkey"),
         "registry.example.com:4999/valkey/valkey:latest"),
        ("ns/svc@sha256:" + "a" * 64, ("ns__svc", "ns-svc"), "ns/svc@sha256:" + "a" * 64),
    ],
)
def test_service_aliases_table(description, aliases, image):
    parsed = naming.split_name_and_version(description)
    assert parsed.aliases == aliases
    assert parsed.image == image


def test_service_version_and_slug():
    parsed = naming.split_name_and_version("registry.example.com:4999/valkey/valkey:8")
    assert parsed.version == "8"
    assert parsed.slug == "registry.example.com__valkey__valkey"
    assert naming.split_name_and_version("postgres").version == "latest"


def test_user_alias_split_and_appended():
    assert naming.split_user_aliases("a,b c") == ["a", "b", "c"]
    assert naming.service_aliases("docker:dind", "dind,engine") == ["docker", "dind", "engine"]


def test_duplicate_alias_skipped_with_warning():
    trace = Trace()
    planned = assign_aliases([
        ServiceDefinition("postgres"),
        ServiceDefinition("docker:dind", alias="db"),
        ServiceDefinition("mysql", alias="db"),
    ], trace)
    assert [aliases for _, _, aliases in planned] == [["postgres"], ["docker", "db"], ["mysql"]]
    assert ('Skipping alias "db" for service "mysql" (services[2]): alias is already in use by another service.'
            in trace.getvalue())


def test_service_with_no_free_alias_not_created():
    planned = assign_aliases([ServiceDefinition("postgres"), ServiceDefinition("postgres:15")], Trace())
    assert [index for index, _, _ in planned] == [0]


def test_parse_volume_entries():
    assert parse_volume("/cache") == (None, "/cache", "")
    assert parse_volume("/var/run/docker.sock:/var/run/docker.sock") == ("/var/run/docker.sock", "/var/run/docker.sock", "")
    assert parse_volume("/srv:/data:ro") == ("/srv", "/data", "ro")
    assert is_host_mounted("/builds", ["/srv/builds:/builds"])
    assert not is_host_mounted("/builds", ["/builds"])


def test_go_duration():
    assert go_duration(3600) == "1h0m0s"
    assert go_duration(300) == "5m0s"
    assert go_duration(45) == "45s"


def test_project_url_strips_credentials():
    assert project_url("http://gitlab-ci-token:abc@fake.local/group/proj.git") == "http://fake.local/group/proj"


def test_labels_of_a_service():
    payload = {"id": 1234, "job_info": {"project_id": 42},
               "git_info": {"repo_url": "http://fake.local/group/proj.git", "sha": "a" * 40, "before_sha": "b" * 40,
                            "ref": "main"}}
    labels = Labeler(payload, "abcdefghi", "s_1", 0, "7", 3600).labels("service", service="docker",
                                                                       service_version="dind")
    assert labels["com.gitlab.gitlab-runner.job.url"] == "http://fake.local/group/proj/-/jobs/1234"
    assert labels["com.gitlab.gitlab-runner.type"] == "service"
    assert labels["com.gitlab.gitlab-runner.service.version"] == "dind"
    assert labels["com.gitlab.gitlab-runner.pipeline.id"] == "7"
    assert labels["com.gitlab.gitlab-runner.job.timeout"] == "1h0m0s"
    assert labels["dind-dood-harness.managed"] == "true"


def test_compat_for_version():
    legacy = RunnerCompat.for_version("18.6.0")
    assert legacy.legacy_links
    assert not legacy.cache_volume_naming_pre_18_4
    assert RunnerCompat.for_version("18.3.1").cache_volume_naming_pre_18_4
    assert not RunnerCompat().legacy_links
    assert RunnerCompat.for_version("15.11.0").container_per_stage
    assert not RunnerCompat.for_version("16.0.0").container_per_stage
