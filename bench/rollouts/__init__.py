"""OTA rollouts: a rollout over 5,000 simulated devices through the real pipeline — commands/s
measured at the devices vs `max_per_minute`, wall time from POST /rollouts to the last `done`,
and the time from the job.completed that crosses the abort threshold to the rollout paused.

bench.py drives it: the devices are the bench's own (`bench-rollout-*`, kept between runs), the
statuses go through the product's own wiring (status/+/update -> device.status -> ota-status),
and the job events reach the product's ota-rollouts like any rollout's.
"""

ORDER = 60
OPTIONS = {  # --set NAME=VALUE of `objectflow bench`: (default, help)
    "devices": (5000, "simulated devices of the healthy rollout (waves 1, 10, 100 %)"),
    "max_per_minute": (1200, "the rollouts' pacing (under OTA_DISPATCH_RATE, 50/s = 3,000/min)"),
    "abort_devices": (400, "devices of the second rollout, 40 % of them failing"),
    "firmware_ms": (200.0, "time a device flashes, between its flashing and done"),
    "budget_s": (
        240.0,
        "the healthy rollout's time: then it is cancelled and shown as far as it got",
    ),
    "profile": (True, "py-spy ota-rollouts and ota-dispatcher during the healthy rollout"),
}
