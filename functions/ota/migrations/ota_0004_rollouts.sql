-- Firmware OTA, part 3 (docs/ota.md, "Rollouts"): a rollout takes a device set through waves
-- of ordinary jobs. Its devices keep the order they were given (their wave follows from their
-- position); a device gets its job when the rollout releases it (wave open, pacing, window).
CREATE TABLE IF NOT EXISTS ota.rollouts (
    id               UUID PRIMARY KEY,
    firmware_version TEXT NOT NULL REFERENCES ota.firmwares (version),
    status           TEXT NOT NULL CHECK (status IN ('running', 'paused', 'done', 'cancelled')),
    reason           TEXT,                   -- why it paused, finished or was cancelled
    version          INTEGER NOT NULL DEFAULT 1,   -- optimistic lock (If-Match / ETag)
    spec             JSONB NOT NULL,         -- waves, threshold, abort, pacing, window as asked
    device_count     INTEGER NOT NULL CHECK (device_count > 0),
    wave             INTEGER NOT NULL DEFAULT 0,   -- the latest wave started (0-based)
    accepted_wave    INTEGER NOT NULL DEFAULT -1,  -- waves an operator resumed past
    -- Pacing: a token bucket, guarded by its own counter so releasing jobs never moves
    -- `version` (an operator's If-Match stays valid while the rollout runs).
    tokens           DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    pace_version     INTEGER NOT NULL DEFAULT 0,
    cancellation     JSONB,                  -- what POST /cancel stopped and what it could not
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rollouts_running_idx ON ota.rollouts (id) WHERE status = 'running';

CREATE TABLE IF NOT EXISTS ota.rollout_devices (
    rollout_id UUID NOT NULL REFERENCES ota.rollouts (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,             -- 0-based, in the order given
    device_id  TEXT NOT NULL REFERENCES ota.devices (device_id),
    wave       INTEGER NOT NULL,             -- 0-based
    job_id     UUID REFERENCES ota.jobs (id),  -- NULL: not released (yet, or again after a pause)
    PRIMARY KEY (rollout_id, position),
    UNIQUE (rollout_id, device_id)
);
CREATE INDEX IF NOT EXISTS rollout_devices_pending_idx ON ota.rollout_devices (rollout_id, position)
    WHERE job_id IS NULL;

-- A rollout's jobs are ordinary jobs that know their rollout.
ALTER TABLE ota.jobs ADD COLUMN IF NOT EXISTS rollout_id UUID REFERENCES ota.rollouts (id);
CREATE INDEX IF NOT EXISTS jobs_rollout_idx ON ota.jobs (rollout_id) WHERE rollout_id IS NOT NULL;
