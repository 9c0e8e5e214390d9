"""The product image service (source document 003; docs/catalog.md)."""
