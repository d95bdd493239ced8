"""Ingest: HTTP intake for indexers, idempotent storage, outbox relay to Kafka."""
