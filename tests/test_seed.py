"""The seed pipeline, run for real in DinD and in DooD, and where everything ended up.

Each test runs against one cached run per mode (see the ``run_scenario`` fixture), so the two
pipelines run once for the whole module.
"""

from __future__ import annotations

import pytest

IMAGE = "registry.cn-beijing.aliyuncs.com/devopsman/marionxue-ops:nodedemo"
REPOSITORY = "devopsman/marionxue-ops"
LOGS = "/logs/nodedemo"


@pytest.fixture
def dind(run_scenario):
    return run_scenario("seed", "dind")


@pytest.fixture
def dood(run_scenario):
    return run_scenario("seed", "dood")


@pytest.mark.dind
class TestSeedInDind:
    def test_jobs_pass(self, dind):
        assert dind.job("BuildImages").status == "success", dind.job("BuildImages").trace
        assert dind.job("TestImage").status == "success", dind.job("TestImage").trace

    def test_image_built_in_dind_only(self, dind):
        # Catches a job that reached the host engine instead of its dind service.
        dind.placement.image(IMAGE).in_daemon("dind:BuildImages").not_in("host")

    def test_registry_holds_pushed_tag(self, dind):
        assert "nodedemo" in dind.registry_tags.get(REPOSITORY, [])

    def test_test_job_pulled_from_registry(self, dind):
        # TestImage gets a fresh dind daemon, so the image must come from the registry again.
        trace = dind.job("TestImage").trace
        assert "Unable to find image" in trace
        requests = dind.registry_requests
        pushed = requests.index(f"PUT /v2/{REPOSITORY}/manifests/nodedemo 201")
        # dockerd 20.10 resolves the tag with HEAD, then fetches the manifest by digest.
        assert f"HEAD /v2/{REPOSITORY}/manifests/nodedemo 200" in requests[pushed + 1:]
        assert any(r.startswith(f"GET /v2/{REPOSITORY}/manifests/sha256:") for r in requests[pushed + 1:])
        dind.placement.image(IMAGE).in_daemon("dind:TestImage")

    def test_base_image_came_from_mirror(self, dind):
        dind.placement.image("node:18").in_daemon("dind:BuildImages").not_in("host")

    def test_container_ran_in_dind_and_is_gone(self, dind):
        container = dind.placement.container("nodedemo")
        container.in_daemon("dind:TestImage").not_in("host")
        container.running_on("dind:TestImage")

    def test_log_landed_in_service_not_job(self, dind):
        # The seed's mount warning: -v /logs/nodedemo is resolved by the dind daemon, so the log
        # lands in the service container's filesystem, never in the job container's.
        dind.placement.path(LOGS).has_files_in("service:TestImage")
        dind.placement.path(LOGS).has_no_files_in("job:TestImage")
        dind.placement.path(LOGS).has_no_files_in("host")

    def test_login_succeeded_and_secrets_masked(self, dind):
        assert "Login Succeeded" in dind.job("BuildImages").trace
        assert dind.leaked_secrets() == []

    def test_nothing_left_on_host(self, dind, host_engine):
        names = {summary["Names"][0].lstrip("/") for summary in host_engine.client.api.containers(all=True)}
        assert not any(name.startswith("runner-") for name in names)
        assert "nodedemo" not in names


@pytest.mark.dood
class TestSeedInDood:
    def test_jobs_pass(self, dood):
        assert dood.job("BuildImages").status == "success", dood.job("BuildImages").trace
        assert dood.job("TestImage").status == "success", dood.job("TestImage").trace

    def test_no_dind_daemon(self, dood):
        assert not any(daemon.startswith("dind") for daemon in dood.placement.daemons)

    def test_image_built_on_host(self, dood):
        dood.placement.image(IMAGE).only_in("host")

    def test_registry_holds_pushed_tag(self, dood):
        assert "nodedemo" in dood.registry_tags.get(REPOSITORY, [])

    def test_container_keeps_running_on_host(self, dood):
        # The job's --restart=always container outlives the job on the host engine.
        container = dood.placement.container("nodedemo").only_in("host")
        container.running_on("host")
        final = dood.placement.final("host")
        record = next(c for c in final.containers if c.name == "nodedemo")
        assert record.network_mode == "host"

    def test_log_on_host_path(self, dood):
        dood.placement.path(LOGS).has_files_in("host")

    def test_teardown_removed_job_leftovers(self, dood, host_engine):
        names = {summary["Names"][0].lstrip("/") for summary in host_engine.client.api.containers(all=True)}
        assert "nodedemo" not in names
        assert not host_engine.client.images.list(name="registry.cn-beijing.aliyuncs.com/devopsman/marionxue-ops")
