"""Code more than one service runs, in four layers (docs/architecture.md draws them).

* :mod:`shared.contract`: what services agree on: the event and trigger models, the
  jobs on Kafka, the topics, SQL fragments over the events table. No I/O.
* :mod:`shared.engine`: the trigger engine: evaluation, the trigger index, replay.
  Pure computation over the contract.
* :mod:`shared.platform`: how a service runs: PostgreSQL and Kafka clients, the
  stream-service frame, ops endpoints, logging, metrics, settings, secrets.
* :mod:`shared.outbound`: the guard every outbound HTTP call goes through.

A layer imports only the contract beneath it (the engine, the platform and the
outbound guard do not import one another); nothing in ``shared`` imports a service.
``make lint`` checks this (import-linter contracts in pyproject.toml).
"""
