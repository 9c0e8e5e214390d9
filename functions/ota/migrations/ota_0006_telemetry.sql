-- Firmware OTA, part 3 (docs/ota.md, "Telemetry"): what a device's heartbeats last said.
-- ota-telemetry writes these at most once per device per OTA_ONLINE_WINDOW/2 (plus a firmware
-- change): the columns hold the latest coalesced heartbeat, never one row per message.
ALTER TABLE ota.devices ADD COLUMN IF NOT EXISTS reported_firmware TEXT;
ALTER TABLE ota.devices ADD COLUMN IF NOT EXISTS battery DOUBLE PRECISION;   -- percent
ALTER TABLE ota.devices ADD COLUMN IF NOT EXISTS signal DOUBLE PRECISION;    -- e.g. RSSI, dBm
ALTER TABLE ota.devices ADD COLUMN IF NOT EXISTS uptime_s BIGINT;

-- A device coming back online finds the running rollouts it waits in (ota-telemetry).
CREATE INDEX IF NOT EXISTS rollout_devices_waiting_idx ON ota.rollout_devices (device_id)
    WHERE job_id IS NULL;
