"""dind-dood-harness: run GitLab CI jobs in DinD and DooD on a real engine and assert placement."""

__version__ = "0.1.0"
