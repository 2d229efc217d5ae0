"""Create the catalog's topics, idempotently, before anything produces to them.

Brokers that auto-create topics give them their own default partition count,
which breaks co-partitioned stream joins; so every service creates the
catalog's topics with their declared partitions at startup.
"""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from driftloop.bus.metadata import topic_partitions
from driftloop.contracts import TOPICS
from driftloop.settings import DriftloopSettings


async def ensure_topics(settings: DriftloopSettings, replication_factor: int = 1) -> list[str]:
    """Create missing catalog topics; return the names created."""
    return await create_missing(
        settings.bootstrap,
        [
            NewTopic(
                settings.topic(spec.name),
                num_partitions=spec.partitions,
                replication_factor=replication_factor,
                topic_configs=spec.config,
            )
            for spec in TOPICS.values()
        ],
    )


async def create_missing(bootstrap: str, topics: list[NewTopic]) -> list[str]:
    """Create those of ``topics`` that do not exist yet and wait until they are known; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="driftloop-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [topic for topic in topics if topic.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()
    if missing:
        # Apache Kafka answers the create before every listener knows the topic: wait until it does,
        # or the first produce fails with an unknown topic.
        await topic_partitions(bootstrap, [t.name for t in missing])
    return [t.name for t in missing]
