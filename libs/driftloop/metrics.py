"""Prometheus metrics every service shares; service-specific ones live beside their code.

Names follow ``driftloop_<thing>_<unit>`` so one Grafana dashboard covers all
six services, told apart by the ``service`` label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_CONSUMED = Counter(
    "driftloop_messages_consumed_total", "Records handled by a consumer.", ["service", "topic", "outcome"]
)
MESSAGES_PRODUCED = Counter("driftloop_messages_produced_total", "Records produced.", ["service", "topic"])
DEADLETTERS = Counter("driftloop_deadletters_total", "Records sent to the dead-letter topic.", ["service", "stage"])
RETRIES = Counter(
    "driftloop_retries_total",
    "Records held back for a retry because a dependency (broker, database, object store) was unavailable.",
    ["service", "stage", "reason"],
)
HANDLER_SECONDS = Histogram("driftloop_handler_seconds", "Time to handle one record.", ["service", "topic"])
POLL_RECORDS = Histogram(
    "driftloop_poll_records",
    "Records a consumer loop handled in one poll (each poll costs the broker a produce and a commit).",
    ["service", "stage"],
    buckets=(1, 5, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
CONSUMER_LAG = Gauge("driftloop_consumer_lag", "Records behind the partition end.", ["service", "topic"])
