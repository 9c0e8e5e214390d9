"""Property-based fuzzing of the parsers that read what outsiders send (hypothesis).

`make test` runs each target for a bounded number of examples; `make fuzz` (`objectflow fuzz`)
runs the same targets for many more (OBJECTFLOW_FUZZ_EXAMPLES). No example database is kept:
a failure prints the example that reproduces it."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "objectflow",
    max_examples=int(os.environ.get("OBJECTFLOW_FUZZ_EXAMPLES", "150")),
    deadline=None,  # a shared 2-core machine: time is not the property
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("objectflow")
