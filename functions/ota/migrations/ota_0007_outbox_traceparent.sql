-- The trace of the change that wrote a row (W3C traceparent), continued by the relay in the
-- Kafka record's ce_traceparent header; NULL when tracing was off.
ALTER TABLE ota.event_outbox ADD COLUMN traceparent text;
