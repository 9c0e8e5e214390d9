-- Camera ingestion and object watcher (source documents 000 and 001): devices and their images.
CREATE SCHEMA IF NOT EXISTS thermo;

CREATE TABLE IF NOT EXISTS thermo.devices (
    id          BIGSERIAL PRIMARY KEY,
    device_uid  TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS thermo.image_objects (
    id            BIGSERIAL PRIMARY KEY,
    device_id     BIGINT NOT NULL REFERENCES thermo.devices (id),
    image_id      TEXT,
    object_key    TEXT NOT NULL UNIQUE,
    bucket        TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    checksum      TEXT,
    size          BIGINT,
    etag          TEXT,
    content_type  TEXT,
    failure_reason TEXT,
    republish_count INTEGER NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS image_objects_status_updated_idx
    ON thermo.image_objects (status, updated_at);
