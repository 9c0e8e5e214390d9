"""Benchmarks of the local runtime (`objectflow bench`); see bench/README.md."""
