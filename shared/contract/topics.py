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


#: Largest message on any topic (and request of our producers, fetch of our
#: consumers): an event as large as one ingest request (5 MiB) and the job or dead
#: letter that carries it fit.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_WEEK_MS = str(7 * 24 * 3600 * 1000)
_LARGE = ("max.message.bytes", str(MAX_MESSAGE_BYTES))

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(EVENTS, 12, (("retention.ms", _WEEK_MS), _LARGE)),
    TopicSpec(ACTIONS, 12, (("retention.ms", _WEEK_MS), _LARGE)),
    TopicSpec(ACTIONS_RETRY, 12, (("retention.ms", _WEEK_MS), _LARGE)),
    TopicSpec(ACTIONS_DLQ, 3, (("retention.ms", str(30 * 24 * 3600 * 1000)), _LARGE)),
)


def partition_key(chain_id: int, agent_id: int | None = None) -> bytes:
    """Partition key of erc8004.events: the chain id alone, so that a chain is one
    partition, consumed in order by one matcher: every trigger (it watches one
    chain) sees its events in chain order, whatever the partitioning, the replicas
    and the rebalances (docs/semantics.md, section 9). ``agent_id`` is not part of it."""
    return str(chain_id).encode()
