"""Settings of the product image service.

Connection settings (PostgreSQL, Redis, MinIO) come from functions.runtime.settings; these are
the service's bucket, limits and lifetimes, built lazily and cached like every settings object.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.runtime import settings


class CatalogSettings(BaseSettings):
    """`MINIO_PRODUCT_BUCKET`, `MINIO_PUBLIC_ENDPOINT` and the `IMAGE_*` knobs."""

    model_config = SettingsConfigDict(extra="ignore")

    minio_product_bucket: str = Field(default="product-images", min_length=3, max_length=63)
    minio_public_endpoint: str | None = Field(
        default=None,
        description="The MinIO URL clients reach, signed into links (default: MINIO_ENDPOINT)",
    )
    image_max_bytes: int = Field(default=5 * 1024 * 1024, gt=0, description="Largest upload")
    image_max_pixels: int = Field(
        default=40_000_000, gt=0, description="Largest width x height decoded (decompression bombs)"
    )
    image_links_ttl_seconds: int = Field(
        default=3000, gt=0, description="How long a product's links stay cached in Redis"
    )
    image_link_expiry_seconds: int = Field(
        default=3600, gt=0, description="How long a presigned link is valid (> the cache TTL)"
    )
    image_orphan_age_seconds: int = Field(
        default=3600, gt=0, description="An object without a row this old is a leftover"
    )

    @model_validator(mode="after")
    def _links_outlive_cache(self) -> CatalogSettings:
        if self.image_link_expiry_seconds <= self.image_links_ttl_seconds:
            raise ValueError(
                "IMAGE_LINK_EXPIRY_SECONDS must exceed IMAGE_LINKS_TTL_SECONDS, so a cached "
                "link is never already expired"
            )
        return self


catalog = settings.cached(CatalogSettings)
