"""Product images: uploads/s and p50/p99 of 1 MiB JPEGs through catalog-api vs a direct boto3
put_object of the same bytes, and link lists cached vs uncached for a product with 20 images.

bench.py runs it against its own catalog-api process (functions-framework --asgi, as the
runtime serves it), so the shared runtime is left as it is.
"""

ORDER = 30
OPTIONS = {  # --set NAME=VALUE of `objectflow bench`: (default, help)
    "concurrency": (4, "uploads in flight at once (both paths)"),
    "image_kib": (1024, "size of each JPEG"),
    "link_requests": (200, "link lists per measurement (cached, uncached)"),
    "repeats": (3, "rounds; each measures both paths in turn, so both meet the same load"),
}
