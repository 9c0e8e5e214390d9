"""The local stack and runtime: the `objectflow` CLI, services, the runtime, demos, simulators.

Import rule (one direction only): devstack never imports bench/ (or tests/). bench/ uses
devstack only through `devstack.api` and the `objectflow` CLI, and plugs its `objectflow bench`
command in through the `objectflow.commands` entry points of pyproject.toml, which
devstack/cli.py loads without knowing what they are. Per-domain tooling lives in
`devstack/<domain>/` (demo.py, sim.py); `objectflow demo` finds the demos by that convention.
"""
