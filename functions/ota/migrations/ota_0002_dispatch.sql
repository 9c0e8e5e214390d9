-- Firmware OTA, part 2 (docs/ota.md, "Commands" and "Deadlines"): the device-facing states,
-- the command a job was last sent, its re-dispatches and the deadline of its current state.
-- Additive: part 1's states stay allowed, so no existing row can break the new check.
ALTER TABLE ota.jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE ota.jobs ADD CONSTRAINT jobs_status_check CHECK (status IN (
    'scheduled', 'ready', 'dispatched', 'downloading', 'flashing', 'done', 'error', 'timed_out',
    'cancelled', 'in_progress', 'completed', 'failed'));

ALTER TABLE ota.jobs ADD COLUMN IF NOT EXISTS message_id UUID;  -- of the command last sent
ALTER TABLE ota.jobs ADD COLUMN IF NOT EXISTS retries INTEGER NOT NULL DEFAULT 0;  -- re-dispatches
-- When a job silent in dispatched/downloading/flashing is overdue (OTA_TIMEOUT_<STATE>); NULL
-- in every other state. ota-deadlines takes overdue jobs by this index.
ALTER TABLE ota.jobs ADD COLUMN IF NOT EXISTS deadline_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS jobs_deadline_idx ON ota.jobs (deadline_at)
    WHERE deadline_at IS NOT NULL;
