"""The contract between the services: ingested events, triggers and their actions,
action jobs and dead letters on Kafka, topic names and keys, SQL fragments over the
events table. Models and constants only: no I/O, and nothing from the layers above."""
