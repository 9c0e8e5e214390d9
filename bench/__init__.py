"""Benchmarks of the local runtime (`objectflow bench`); see bench/README.md.

Import rule (one direction only): bench may import devstack, but only `devstack.api` (and run
the `objectflow` CLI); devstack never imports bench. `objectflow bench` reaches the CLI through
the `objectflow.commands` entry point in pyproject.toml (bench.cli:bench), and also runs as
`python -m bench`. One folder per benchmark, `bench/<name>/` (bench.registry finds them);
shared helpers in bench/common.py.
"""
