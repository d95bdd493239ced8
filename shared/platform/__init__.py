"""How a service runs: the PostgreSQL pool and listener, Kafka producers and lag
probes, the FastStream frame of the consuming services, ops endpoints (/healthz,
/readyz, /metrics), JSON logging, settings, secrets and the event loop."""
