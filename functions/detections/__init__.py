"""The detections outbox (source document 004): MongoDB predictions -> MinIO objects.

A runner leaves documents with `status: "predictable"` in `runner_db.runner_predictions`; the
`mongo-outbox` source posts one event per document, `detections-store` writes its prediction to
`<bucket>/detection/<event_id>.json` and marks it `ready`, `detections-reconcile` watches for
stuck and lost ones. See docs/detections.md.
"""
