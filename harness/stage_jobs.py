"""The jobs of one stage, run one after another or, with ``concurrent = N``, up to N at a time.

GitLab Runner's global ``concurrent`` caps how many jobs one runner process runs at once. Each
running job holds a slot number from 0 to N - 1, its ``CI_CONCURRENT_ID``, which goes into the
names of its containers, volumes and network. A slot is reused only after its job finished.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

Job = TypeVar("Job")
Result = TypeVar("Result")


def run_stage(jobs: Sequence[Job], run_job: Callable[[Job, int], Result], concurrent: int) -> list[Result]:
    """Run ``run_job(job, concurrent_id)`` for every job; return the results in job order.

    With ``concurrent`` 1 the jobs run one after another in this thread, all in slot 0. Above 1,
    up to ``concurrent`` jobs run at once in worker threads, each holding a free slot.

    Raises:
        Exception: the first exception a ``run_job`` call raised, after every job has finished.
    """
    if concurrent <= 1 or len(jobs) <= 1:
        return [run_job(job, 0) for job in jobs]

    slots: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(concurrent):
        slots.put(slot)

    def run_in_slot(job: Job) -> Result:
        slot = slots.get()
        try:
            log.debug("job %s runs in slot %d", job, slot)
            return run_job(job, slot)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="stage-job") as pool:
        futures = [pool.submit(run_in_slot, job) for job in jobs]
    return [future.result() for future in futures]
