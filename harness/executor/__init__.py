"""GitLab Runner's docker executor, reproduced on a Docker engine for one job payload at a time.

Runs on the host under docker-py 7 and inside the runner container under Debian bookworm's
Python 3.11 and python3-docker 5.0.3, so it imports only the standard library, docker-py and the
stdlib-only harness modules ``errors``, ``labels``, ``variables`` and ``runner_config``.
"""

from harness.executor.compat import RunnerCompat
from harness.executor.executor import DockerExecutor, JobObserver
from harness.executor.job import JobContext
from harness.executor.result import JobResult
from harness.executor.services import ServiceInfo
from harness.executor.settings import ExecutorSettings

__all__ = ["DockerExecutor", "ExecutorSettings", "JobContext", "JobObserver", "JobResult", "RunnerCompat",
           "ServiceInfo"]
