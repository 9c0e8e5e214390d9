"""Firmware over-the-air updates, part 1 (docs/ota.md): the job API with a transactional outbox,
the outbox relay to Kafka `job.events`, and the scheduler that makes due jobs ready."""
