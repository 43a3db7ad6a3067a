"""Creates the usage topics with their partitions and retention (Kafka admin API).

Usage events are keyed by `org/project`, so one project's events keep their order within
one partition; partitions are how far consumption can spread over trace-ingest replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("interlock.traceingest.kafka_topics")

_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    """One topic to have."""

    name: str
    partitions: int
    retention_ms: int
    replication_factor: int = 1


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec]) -> list[str]:
    """Create the topics of `specs` that do not exist; returns the names created now.

    An existing topic is left as it is (partitions can only grow, and that is an
    operator's decision: it moves keys between partitions).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="interlock-topics")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    name=s.name,
                    num_partitions=s.partitions,
                    replication_factor=s.replication_factor,
                    topic_configs={"retention.ms": str(s.retention_ms)},
                )
                for s in missing
            ]
        )
        created = []
        for name, code, *rest in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:  # another replica won the race: fine
                raise RuntimeError(f"cannot create topic {name}: error {code} {rest[0] if rest else ''}")
        if created:
            log.info("created kafka topics", extra={"fields": {"topics": ",".join(created)}})
        return created
    finally:
        await admin.close()
