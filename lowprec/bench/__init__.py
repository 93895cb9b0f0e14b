"""Microbenchmark harness shared by the `lowprec bench` command and benchmarks/."""

from .harness import environment, time_fn, write_results

__all__ = ["environment", "time_fn", "write_results"]
