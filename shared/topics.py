"""Kafka topic names and their layout: the contract between the services."""

from __future__ import annotations

from dataclasses import dataclass

EVENTS = "erc8004.events"
ACTIONS = "erc8004.actions"
ACTIONS_RETRY = "erc8004.actions.retry"
ACTIONS_DLQ = "erc8004.actions.dlq"

MATCHER_GROUP = "matcher"
DISPATCHER_GROUP = "dispatcher"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    #: Topic-level configs; replication and min.insync.replicas come from the cluster.
    configs: tuple[tuple[str, str], ...] = ()


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(EVENTS, 12, (("retention.ms", str(7 * 24 * 3600 * 1000)),)),
    TopicSpec(ACTIONS, 12, (("retention.ms", str(7 * 24 * 3600 * 1000)),)),
    TopicSpec(ACTIONS_RETRY, 12, (("retention.ms", str(7 * 24 * 3600 * 1000)),)),
    TopicSpec(ACTIONS_DLQ, 3, (("retention.ms", str(30 * 24 * 3600 * 1000)),)),
)


def event_key(chain_id: int, agent_id: int | None) -> bytes:
    """Partition key of erc8004.events: ``chain_id:agent_id`` (agent '' when absent)."""
    return f"{chain_id}:{'' if agent_id is None else agent_id}".encode()
