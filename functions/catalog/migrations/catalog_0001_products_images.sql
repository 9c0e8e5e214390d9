-- The product image service (docs/catalog.md). A deleted product keeps its row as a tombstone
-- (deleted_at set), so a late or replayed product.created never brings it back.
CREATE SCHEMA IF NOT EXISTS catalog;

CREATE TABLE IF NOT EXISTS catalog.products (
    product_id  UUID PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS catalog.images (
    image_id     UUID PRIMARY KEY,
    product_id   UUID NOT NULL REFERENCES catalog.products (product_id),
    bucket       TEXT NOT NULL,
    object_key   TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png')),
    size         BIGINT NOT NULL CHECK (size > 0),
    sha256       CHAR(64) NOT NULL,
    width        INTEGER NOT NULL CHECK (width > 0),
    height       INTEGER NOT NULL CHECK (height > 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS images_product_idx ON catalog.images (product_id, created_at);

-- Bumped in the transaction that adds or removes an image of the product: a cached list of
-- links is served only while it carries the current version, so an invalidation that could not
-- reach Redis never leaves stale links behind. Its own table, so uploads (which hold a key-share
-- lock on the product row while they upload) never wait on each other for the product row.
CREATE TABLE IF NOT EXISTS catalog.link_versions (
    product_id UUID PRIMARY KEY REFERENCES catalog.products (product_id) ON DELETE CASCADE,
    version    BIGINT NOT NULL DEFAULT 0
);
