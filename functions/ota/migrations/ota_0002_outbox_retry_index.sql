-- The rows waiting for a retry, found without scanning every pending row: the relay's read
-- (functions/ota/outbox.py ready_rows) skips their devices on each cycle.
CREATE INDEX IF NOT EXISTS event_outbox_retry_idx ON ota.event_outbox (partition_key)
    WHERE sent_at IS NULL AND dead_at IS NULL AND attempts > 0;
