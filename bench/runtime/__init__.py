"""The local runtime: latency one broker hop adds (open loop at 200 and 1,000 events/s, broker vs
direct POST), cold start and RSS of an adapter function vs a bare functions-framework hello-world.

bench.py runs it; functions.py holds the bench subscribers (bench/values-bench.yaml).
"""

ORDER = 10
OPTIONS = {  # --set NAME=VALUE of `objectflow bench`: (default, help)
    "repeats": (5, "cold starts per function"),
}
