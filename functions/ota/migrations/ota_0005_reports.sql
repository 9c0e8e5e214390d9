-- Firmware OTA, part 3 (docs/ota.md, "Reports"): read-optimised tables ota-reports keeps from
-- job.completed and rollout.* events. Each finished job is one `report_jobs` row (its job id is
-- the idempotency key); the daily counts move in the same statement that inserts it, so a
-- replayed job.completed finds its row and counts nothing twice.
CREATE TABLE IF NOT EXISTS ota.report_jobs (
    job_id           UUID PRIMARY KEY,
    event_id         UUID NOT NULL,          -- the job.completed event first applied
    device_id        TEXT NOT NULL,
    model            TEXT NOT NULL,          -- the device's model when the job finished
    firmware_version TEXT NOT NULL,
    rollout_id       UUID,
    outcome          TEXT NOT NULL CHECK (outcome IN ('done', 'error', 'timed_out')),
    created_at       TIMESTAMPTZ,
    dispatched_at    TIMESTAMPTZ,            -- the first command
    finished_at      TIMESTAMPTZ NOT NULL,
    duration_s       DOUBLE PRECISION        -- finished_at - dispatched_at
);
CREATE INDEX IF NOT EXISTS report_jobs_rollout_idx ON ota.report_jobs (rollout_id, finished_at)
    WHERE rollout_id IS NOT NULL;

-- Per UTC day and firmware version (dimension 'firmware') or device model ('model').
CREATE TABLE IF NOT EXISTS ota.report_daily (
    day            DATE NOT NULL,
    dimension      TEXT NOT NULL CHECK (dimension IN ('firmware', 'model')),
    key            TEXT NOT NULL,
    succeeded      BIGINT NOT NULL DEFAULT 0,
    failed         BIGINT NOT NULL DEFAULT 0,
    timed_out      BIGINT NOT NULL DEFAULT 0,
    timed          BIGINT NOT NULL DEFAULT 0,   -- jobs with a duration (dispatched)
    duration_sum_s DOUBLE PRECISION NOT NULL DEFAULT 0,
    duration_max_s DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (day, dimension, key)
);

-- A rollout's history as its events told it (the PDF's timeline); the event id dedupes.
CREATE TABLE IF NOT EXISTS ota.report_rollout_events (
    event_id    UUID PRIMARY KEY,
    rollout_id  UUID NOT NULL,
    type        TEXT NOT NULL,
    status      TEXT NOT NULL,
    wave        INTEGER NOT NULL,               -- 1-based, as in the event
    reason      TEXT,
    occurred_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS report_rollout_events_idx
    ON ota.report_rollout_events (rollout_id, occurred_at);

-- The CSV's dispatched_at: a job's first dispatch in its history, found by this index.
CREATE INDEX IF NOT EXISTS job_events_dispatched_idx ON ota.job_events (job_id, occurred_at)
    WHERE status = 'dispatched';

-- Jobs that finished before this migration: the same rows and counts their events would make.
WITH fact AS (
    INSERT INTO ota.report_jobs (job_id, event_id, device_id, model, firmware_version,
                                 rollout_id, outcome, created_at, dispatched_at, finished_at,
                                 duration_s)
    SELECT j.id, e.event_id, j.device_id, coalesce(d.model, 'unknown'), j.firmware_version,
           j.rollout_id, e.status, j.created_at, f.first, e.occurred_at,
           extract(epoch FROM e.occurred_at - f.first)
    FROM ota.job_events e
    JOIN ota.jobs j ON j.id = e.job_id
    LEFT JOIN ota.devices d ON d.device_id = j.device_id
    LEFT JOIN LATERAL (SELECT min(x.occurred_at) AS first FROM ota.job_events x
                       WHERE x.job_id = j.id AND x.status = 'dispatched') f ON true
    WHERE e.type = 'job.completed' AND e.status IN ('done', 'error', 'timed_out')
    ON CONFLICT (job_id) DO NOTHING
    RETURNING *
)
INSERT INTO ota.report_daily (day, dimension, key, succeeded, failed, timed_out, timed,
                              duration_sum_s, duration_max_s)
SELECT (fact.finished_at AT TIME ZONE 'UTC')::date, dim.dimension, dim.key,
       count(*) FILTER (WHERE outcome = 'done'), count(*) FILTER (WHERE outcome = 'error'),
       count(*) FILTER (WHERE outcome = 'timed_out'), count(duration_s),
       coalesce(sum(duration_s), 0), coalesce(max(duration_s), 0)
FROM fact, LATERAL (VALUES ('firmware', fact.firmware_version), ('model', fact.model))
     AS dim (dimension, key)
GROUP BY 1, 2, 3
ON CONFLICT (day, dimension, key) DO UPDATE SET
    succeeded = ota.report_daily.succeeded + excluded.succeeded,
    failed = ota.report_daily.failed + excluded.failed,
    timed_out = ota.report_daily.timed_out + excluded.timed_out,
    timed = ota.report_daily.timed + excluded.timed,
    duration_sum_s = ota.report_daily.duration_sum_s + excluded.duration_sum_s,
    duration_max_s = greatest(ota.report_daily.duration_max_s, excluded.duration_max_s);
