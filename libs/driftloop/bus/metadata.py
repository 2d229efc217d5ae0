"""Which partitions a topic has, asked of the broker by name.

aiokafka clients start with metadata for an empty topic list. Tansu answers
that request with every topic, Apache Kafka with none, so code that reads
``partitions_for_topic`` right after ``start()`` works on one broker only.
Readers that assign partitions themselves (replays, the demo, the tests) ask
here instead: a metadata request naming the topics, repeated until every one
has partitions or the deadline passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class TopicUnavailable(RuntimeError):
    """A topic still had no partitions when the deadline passed."""


async def topic_partitions(bootstrap: str, topics: Sequence[str], timeout: float = 30.0) -> list[TopicPartition]:
    """Every partition of ``topics`` (full names, prefix included), in topic then partition order.

    Waits while a topic is being created: a service may start before the one
    that creates the catalog's topics has finished.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="driftloop-metadata")
    deadline = time.monotonic() + timeout
    await admin.start()
    try:
        while True:
            # Listing first: a metadata request naming a missing topic makes brokers that auto-create
            # topics create it, with their default partition count instead of the catalog's.
            existing = set(await admin.list_topics())
            named = [t for t in topics if t in existing]
            described = await admin.describe_topics(named) if named else []
            partitions = {
                d["topic"]: sorted(p["partition"] for p in d["partitions"])
                for d in described
                if d["error_code"] == 0 and d["partitions"]
            }
            missing = [t for t in topics if t not in partitions]
            if not missing:
                return [TopicPartition(t, p) for t in topics for p in partitions[t]]
            if time.monotonic() >= deadline:
                raise TopicUnavailable(
                    f"topic(s) {', '.join(missing)} have no partitions on {bootstrap} after {timeout:.0f}s: "
                    "is the topic created and DRIFTLOOP_TOPIC_PREFIX right?"
                )
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
