"""The seed pipeline, run for real in DinD and in DooD: the checks ``scenario.toml`` cannot state.

``scenarios/seed/scenario.toml`` lists where the image, the container and the log file must land
in each mode, and ``tests/test_scenarios.py`` runs those checks. This module adds the registry's
request order, masked secrets, the container's network mode and the engine after teardown. Each
test uses one cached run per mode (see the ``run_scenario`` fixture), shared with
``tests/test_scenarios.py``, so the two pipelines run once per session. Both go through the
built-in coordinator, and the tests check that the runner and python-gitlab talked to it.
"""

from __future__ import annotations

import pytest

from worker_groups import SEED_RUNS

pytestmark = SEED_RUNS

REPOSITORY = "devopsman/marionxue-ops"


def assert_through_coordinator(result) -> None:
    """Assert that the runner took every job from the coordinator and python-gitlab read them back."""
    served = result.job_api_requests
    jobs = len(result.jobs)
    # Catches a run that hands jobs to the runner directly instead of over the job API.
    assert served.get("POST /jobs/request", 0) >= jobs, served
    assert served.get("PUT /jobs/:id", 0) >= 2 * jobs, served
    assert served.get("PATCH /jobs/:id/trace", 0) >= jobs, served
    assert served.get("POST /projects/:id/pipeline") == 1, served
    assert served.get("GET /projects/:id/pipelines/:id/jobs", 0) >= 1, served
    assert served.get("GET /projects/:id/jobs/:id/trace", 0) == jobs, served
    assert all(job.started_at > 0 and job.trace for job in result.jobs), result.summary()


@pytest.fixture
def dind(run_scenario):
    return run_scenario("seed", "dind")


@pytest.fixture
def dood(run_scenario):
    return run_scenario("seed", "dood")


@pytest.mark.dind
class TestSeedInDind:
    def test_jobs_through_coordinator(self, dind):
        assert_through_coordinator(dind)

    def test_test_job_pulled_from_registry(self, dind):
        requests = dind.registry_requests
        pushed = requests.index(f"PUT /v2/{REPOSITORY}/manifests/nodedemo 201")

        # Catches a TestImage that reused BuildImages' daemon or image store instead of pulling.
        # dockerd 20.10 resolves the tag with HEAD, then fetches the manifest by digest.
        assert f"HEAD /v2/{REPOSITORY}/manifests/nodedemo 200" in requests[pushed + 1:]
        assert any(r.startswith(f"GET /v2/{REPOSITORY}/manifests/sha256:") for r in requests[pushed + 1:])

    def test_secrets_masked(self, dind):
        # Catches a trace or log that shows the registry credentials the jobs received.
        assert dind.leaked_secrets() == []

    def test_nothing_left_on_host(self, dind, host_engine):
        names = {summary["Names"][0].lstrip("/") for summary in host_engine.client.api.containers(all=True)}

        # Catches a teardown that leaves the job's containers, or a run that reached the host engine.
        assert not any(name.startswith("runner-") for name in names)
        assert "nodedemo" not in names


@pytest.mark.dood
class TestSeedInDood:
    def test_jobs_through_coordinator(self, dood):
        assert_through_coordinator(dood)

    def test_no_dind_daemon(self, dood):
        # Catches a DooD runner config that still starts a dind service.
        assert not any(daemon.startswith("dind") for daemon in dood.placement.daemons)

    def test_container_on_host_network(self, dood):
        final = dood.placement.final("host")
        records = [c for c in final.containers if c.name == "nodedemo"]

        assert records, dood.placement.table()
        # Catches a placement reader that drops the network mode. DooD's --net=host is the real host's.
        assert records[0].network_mode == "host"

    def test_secrets_masked(self, dood):
        assert dood.leaked_secrets() == []

    def test_teardown_removed_job_leftovers(self, dood, host_engine):
        names = {summary["Names"][0].lstrip("/") for summary in host_engine.client.api.containers(all=True)}

        # Catches a DooD teardown that leaves what the job created on the host engine.
        assert "nodedemo" not in names
        assert not host_engine.client.images.list(name="registry.cn-beijing.aliyuncs.com/devopsman/marionxue-ops")
