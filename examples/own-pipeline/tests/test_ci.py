"""Where this repository's CI puts the image it builds, on each kind of runner.

Run with ``pytest`` in this folder; the pipeline runs once per runner config for the session.
"""

IMAGE = "example/hello:ci"


def test_job_passes_on_both_runners(own_pipeline):
    for mode in ("dind", "dood"):
        result = own_pipeline(mode)
        assert result.job("build-image").status == "success", result.job("build-image").trace


def test_dind_runner_keeps_image_off_host(own_pipeline):
    # The job's docker client talks to its docker:dind service, so the image lives and dies there.
    own_pipeline("dind").placement.image(IMAGE).only_in("dind:build-image")


def test_dood_runner_builds_on_host(own_pipeline):
    # With the host socket mounted, the build lands on the host engine, next to everything else.
    own_pipeline("dood").placement.image(IMAGE).only_in("host")


def test_base_image_pulled_into_dind_only(own_pipeline):
    own_pipeline("dind").placement.image("busybox").in_daemon("dind:build-image").not_in("host")
