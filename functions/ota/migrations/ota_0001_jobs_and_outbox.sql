-- Firmware OTA, part 1 (docs/ota.md): devices, firmwares, jobs with their history, and the
-- transactional outbox the relay publishes to Kafka `job.events`.
CREATE SCHEMA IF NOT EXISTS ota;

CREATE TABLE IF NOT EXISTS ota.devices (
    device_id        TEXT PRIMARY KEY,
    model            TEXT NOT NULL,
    timezone         TEXT NOT NULL,          -- IANA name, the default zone of its cron jobs
    current_firmware TEXT,
    last_seen        TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ota.firmwares (
    version    TEXT PRIMARY KEY,
    object_key TEXT NOT NULL,                -- in MINIO_FIRMWARE_BUCKET
    size       BIGINT NOT NULL CHECK (size >= 0),
    sha256     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ota.jobs (
    id               UUID PRIMARY KEY,
    device_id        TEXT NOT NULL REFERENCES ota.devices (device_id),
    firmware_version TEXT NOT NULL REFERENCES ota.firmwares (version),
    schedule         JSONB NOT NULL,         -- {"kind": now|at|cron, "cron", "timezone", ...}
    due_at           TIMESTAMPTZ NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('scheduled', 'ready', 'dispatched',
                         'in_progress', 'completed', 'failed', 'cancelled')),
    status_reason    TEXT,
    version          INTEGER NOT NULL DEFAULT 1,   -- optimistic lock (If-Match / ETag)
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- GET /jobs pages by (created_at, id); the scheduler's tick takes due scheduled jobs.
CREATE INDEX IF NOT EXISTS jobs_page_idx ON ota.jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_device_idx ON ota.jobs (device_id, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_due_idx ON ota.jobs (due_at) WHERE status = 'scheduled';

CREATE TABLE IF NOT EXISTS ota.job_events (
    id          BIGSERIAL PRIMARY KEY,
    event_id    UUID NOT NULL UNIQUE,        -- the same id as its outbox row
    job_id      UUID NOT NULL REFERENCES ota.jobs (id) ON DELETE CASCADE,
    type        TEXT NOT NULL,               -- job.created, job.updated, ...
    version     INTEGER NOT NULL,            -- the job's version after this change
    status      TEXT NOT NULL,
    detail      JSONB NOT NULL DEFAULT '{}',
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS job_events_job_idx ON ota.job_events (job_id, id);

-- One row per event to publish. `txid` is the writing transaction's id: the relay reads only
-- rows of transactions below its snapshot's xmin horizon (all committed or aborted), ordered by
-- (txid, id), so a transaction that commits late is never skipped.
CREATE TABLE IF NOT EXISTS ota.event_outbox (
    id              BIGSERIAL PRIMARY KEY,
    event_id        UUID NOT NULL UNIQUE,
    aggregate_type  TEXT NOT NULL,           -- 'job'
    aggregate_id    TEXT NOT NULL,           -- the job id
    partition_key   TEXT NOT NULL,           -- the device id: Kafka record key and relay lane
    event_type      TEXT NOT NULL,           -- job.created, ...
    payload         JSONB NOT NULL,
    txid            XID8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    sent_at         TIMESTAMPTZ,
    dead_at         TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS event_outbox_pending_idx ON ota.event_outbox (txid, id)
    WHERE sent_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS event_outbox_sent_idx ON ota.event_outbox (sent_at)
    WHERE sent_at IS NOT NULL;

-- Wake the relay (LISTEN ota_outbox) once per inserting statement; delivered at commit.
CREATE OR REPLACE FUNCTION ota.notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ota_outbox', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS event_outbox_notify ON ota.event_outbox;
CREATE TRIGGER event_outbox_notify AFTER INSERT ON ota.event_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION ota.notify_outbox();
