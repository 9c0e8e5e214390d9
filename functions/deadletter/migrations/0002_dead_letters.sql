-- The dead-letter store: events a trigger could not deliver, kept whole so they can be re-driven.
CREATE SCHEMA IF NOT EXISTS objectflow;

CREATE TABLE IF NOT EXISTS objectflow.dead_letters (
    id                BIGSERIAL PRIMARY KEY,
    event_id          TEXT NOT NULL,
    event_source      TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    event_subject     TEXT,
    destination       TEXT NOT NULL,      -- the subscriber that failed (knativeerrordest)
    trigger_name      TEXT,
    status_code       INTEGER,            -- last answer (knativeerrorcode); NULL: no answer at all
    response_body     TEXT,               -- last answer's body (knativeerrordata)
    attempts          INTEGER NOT NULL DEFAULT 1,
    cloudevent        JSONB NOT NULL,     -- the original event, structured mode
    first_attempt_at  TIMESTAMPTZ,
    last_attempt_at   TIMESTAMPTZ,
    dead_lettered_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    dead_letter_count INTEGER NOT NULL DEFAULT 1,
    redriven_at       TIMESTAMPTZ,
    redrive_status    INTEGER,
    UNIQUE (event_source, event_id, destination)
);

CREATE INDEX IF NOT EXISTS dead_letters_pending_idx
    ON objectflow.dead_letters (dead_lettered_at) WHERE redriven_at IS NULL;
