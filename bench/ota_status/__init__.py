"""OTA device statuses: statuses/s and p50/p99 device publish -> job row of the pipeline (MQTT
bridge -> Kafka -> the runtime's Kafka source -> broker -> ota-status -> PostgreSQL) vs the source
document's direct single-process Kafka consumer, both fed by the same 5,000 simulated devices,
plus the simulator's own CPU.

bench.py runs it on topics, a consumer group and device rows of its own (bench/values-bench.yaml
routes `bench/<path>/status/+/update` to them); direct.py is the direct consumer.
"""

ORDER = 50
OPTIONS = {  # --set NAME=VALUE of `objectflow bench`: (default, help)
    "devices": (5000, "simulated devices, each its own MQTT session, one job each"),
    "rate": (1000.0, "statuses per second offered (commands go out at rate / 5: 5 per job)"),
    "firmware_ms": (200.0, "time a device flashes, between its flashing and done"),
    "profile": (True, "py-spy the ota-status process, the Kafka source and the bridge"),
}
