-- Firmware OTA, part 2, the status path (docs/ota.md "Device statuses"): the device-reported
-- job states, and every status a device reported, once per (job, command, status).

-- The job states of part 2 (the same list as ota_0002_dispatch.sql, so either order works).
ALTER TABLE ota.jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE ota.jobs ADD CONSTRAINT jobs_status_check CHECK (status IN ('scheduled', 'ready',
    'dispatched', 'downloading', 'flashing', 'done', 'error', 'timed_out', 'cancelled',
    'in_progress', 'completed', 'failed'));

-- The idempotency key of ota-status: a status applies at most once per command message, so a
-- redelivered or replayed status finds its row and changes nothing. `outcome` says what the
-- first arrival did: applied, or recorded and ignored (repeated, late, impossible).
CREATE TABLE IF NOT EXISTS ota.device_statuses (
    job_id      UUID NOT NULL REFERENCES ota.jobs (id) ON DELETE CASCADE,
    message_id  TEXT NOT NULL,               -- the command's message id the device answers
    status      TEXT NOT NULL,               -- downloading | flashing | done | error
    device_id   TEXT NOT NULL,
    progress    SMALLINT,
    error       TEXT,
    reported_at TIMESTAMPTZ,                 -- the device's `ts`
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome     TEXT NOT NULL CHECK (outcome IN ('applied', 'repeated', 'late', 'impossible')),
    PRIMARY KEY (job_id, message_id, status)
);
