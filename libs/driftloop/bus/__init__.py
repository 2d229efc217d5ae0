"""Typed Kafka plumbing over aiokafka: publish with CloudEvents headers, consume safely.

The consumer commits an offset only after its handler finished (the effect is
durable), waits out an unavailable dependency with back-off for as long as it
takes, dead-letters what can never succeed with the reason (see
``driftloop.bus.faults``), and skips records whose ``event_id`` it has already
handled.
"""

from driftloop.bus.consumer import ConsumerLoop, Deduper, MemoryDeduper, Record, replay
from driftloop.bus.faults import PoisonMessage, classify
from driftloop.bus.follow import FollowerFailed, follower_state, wait_caught_up
from driftloop.bus.metadata import TopicUnavailable, topic_partitions
from driftloop.bus.producer import Bus, Outgoing, cloudevent_headers, deadletter_for
from driftloop.bus.topics import ensure_topics

__all__ = [
    "Bus",
    "ConsumerLoop",
    "Deduper",
    "MemoryDeduper",
    "Outgoing",
    "PoisonMessage",
    "Record",
    "TopicUnavailable",
    "classify",
    "cloudevent_headers",
    "deadletter_for",
    "ensure_topics",
    "replay",
    "FollowerFailed",
    "follower_state",
    "wait_caught_up",
    "topic_partitions",
]
