-- camera-watch: which object versions have been announced on RabbitMQ, so a duplicate bucket
-- notification publishes nothing new. The row is inserted in the same transaction that waits
-- for the publisher confirm: a concurrent duplicate blocks on it, then finds it committed.
CREATE TABLE IF NOT EXISTS thermo.watch_publications (
    bucket          TEXT NOT NULL,
    object_key      TEXT NOT NULL,
    version         TEXT NOT NULL,      -- versionId, else etag, else the notification sequencer
    image_object_id BIGINT NOT NULL REFERENCES thermo.image_objects (id) ON DELETE CASCADE,
    routing_key     TEXT NOT NULL,
    published_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, object_key, version)
);

-- camera-api looks captures up by their image id.
CREATE INDEX IF NOT EXISTS image_objects_image_id_idx ON thermo.image_objects (image_id);
