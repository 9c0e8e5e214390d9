"""The local runtime: latency one broker hop adds (open loop at 200, 1,000 and 3,000 events/s,
broker vs direct POST, the journal's fsync as the limit), cold start and RSS of an adapter
function vs a bare functions-framework hello-world.

bench.py runs it; functions.py holds the bench subscribers (bench/values-bench.yaml); profile.py
samples the broker and the function with py-spy (`--set profile=true`).
"""

ORDER = 10
OPTIONS = {  # --set NAME=VALUE of `objectflow bench`: (default, help)
    "repeats": (5, "cold starts per function"),
    "rates": ("200,1000,3000", "events/s of the latency runs, comma-separated"),
    "profile": (False, "py-spy the broker and the function during the 1,000/s broker run"),
}
