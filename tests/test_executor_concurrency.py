"""The runner's job slot (``concurrent_id``) in names and variables; no engine needed."""

from __future__ import annotations

import threading
import time

from harness.executor.compat import RunnerCompat
from harness.executor.job import build_context
from harness.executor.settings import ExecutorSettings
from harness.stage_jobs import run_stage

PAYLOAD = {"id": 7, "job_info": {"project_id": 3}, "git_info": {"repo_url": "http://gitlab.invalid/group/app.git"},
           "image": {"name": "busybox"}, "variables": [{"key": "FF_NETWORK_PER_BUILD", "value": "true"}]}
SETTINGS = ExecutorSettings(token="glrt-t1_concurrencytest0", system_id="s_0123456789ab")


def _context(concurrent_id: int):
    return build_context(None, PAYLOAD, SETTINGS, RunnerCompat(), random_hex="0" * 16, concurrent_id=concurrent_id)


def test_slot_zero_is_default():
    context = build_context(None, PAYLOAD, SETTINGS, RunnerCompat(), random_hex="0" * 16)

    assert context.concurrent_id == 0
    assert "-concurrent-0-" in context.prefix


def test_slot_reaches_names():
    context = _context(1)

    assert context.prefix.startswith("runner-concurren-project-3-concurrent-1-")
    assert context.network_name == "runner-concurren-3-1-7"
    assert context.variables.get("CI_CONCURRENT_ID") == "1"
    assert context.variables.get("CI_CONCURRENT_PROJECT_ID") == "1"


def test_slots_never_share_names():
    first, second = _context(0), _context(1)

    assert first.prefix != second.prefix
    assert first.network_name != second.network_name
    # Each slot has its own reusable cache volumes, as GitLab Runner gives each slot its own.
    assert first.reusable_name != second.reusable_name


# run_stage: slots and ordering, with plain callables in place of jobs.


def test_run_stage_sequential_uses_slot_zero():
    seen = []

    results = run_stage(["a", "b"], lambda job, slot: seen.append((job, slot)) or job.upper(), concurrent=1)

    assert results == ["A", "B"]
    assert seen == [("a", 0), ("b", 0)]


def test_run_stage_overlaps_with_distinct_slots():
    barrier = threading.Barrier(2, timeout=5)
    slots = {}

    def run(job, slot):
        slots[job] = slot
        barrier.wait()  # raises BrokenBarrierError unless both jobs run at the same time
        return job

    assert run_stage(["a", "b"], run, concurrent=2) == ["a", "b"]
    assert sorted(slots.values()) == [0, 1]


def test_run_stage_caps_parallel_jobs():
    running, peak = [], []
    lock = threading.Lock()

    def run(job, slot):
        with lock:
            running.append(job)
            peak.append(len(running))
        time.sleep(0.05)
        with lock:
            running.remove(job)
        return slot

    slots = run_stage(list(range(6)), run, concurrent=2)

    assert max(peak) == 2
    assert set(slots) == {0, 1}


def test_image_name_expands_job_variables():
    payload = {**PAYLOAD, "image": {"name": "node:$NODE_VERSION"},
               "variables": [{"key": "NODE_VERSION", "value": "18", "public": True}]}

    context = build_context(None, payload, SETTINGS, RunnerCompat(), random_hex="0" * 16)

    assert context.image == "node:18"
    assert context.variables.get("CI_JOB_IMAGE") == "node:18"
