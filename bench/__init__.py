"""Benchmarks of the harness against the plain docker floor and gitlab-ci-local (`make bench`)."""
