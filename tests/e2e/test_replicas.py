"""The loop with two replicas of every service: exact counts, one run, one promotion, never a step back.

Kafka spreads each service's partitions over its two replicas; what must have
one writer (the outbox relays, the claimed training run, the alias revision)
has it by lease or row lock. Duplicates would show here as an event validated
twice, an outcome scored twice, a second run or promotion, or a deployment
replica serving an older version after a newer one.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from driftloop.broker import free_port
from driftloop.cli.demo import DemoOptions, run_demo
from driftloop.cli.stack import SERVICES, Stack, child_name
from driftloop.contracts import EventValidated, ModelPromoted, RolloutCompleted, TrainingRunCompleted, parse_internal
from driftloop.settings import DriftloopSettings
from tests.fixtures.kafka import Broker
from tests.support import read_topic

REPO = Path(__file__).resolve().parents[2]
MODEL = "loan-approval"
REPLICAS = 2
OPTIONS = DemoOptions(
    model=MODEL, warmup=1200, drift_at=2500, max_events=9000, eval_events=400, rate=100.0, timeout=240.0
)


@pytest.fixture
def stack(broker: Broker, tmp_path: Path) -> Iterator[Stack]:
    settings = DriftloopSettings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"rep{uuid.uuid4().hex[:8]}.",
        home=tmp_path / "home",
        config=REPO / "driftloop.yaml",
    )
    ports = {child_name(s, r): free_port() for s in SERVICES for r in range(REPLICAS)}
    stack = Stack(settings, ports=ports, env={"DRIFTLOOP_LOG_FORMAT": "json"}, replicas=dict.fromkeys(SERVICES, 2))
    try:
        stack.start()
        stack.wait_ready(180)
        yield stack
    finally:
        stack.stop()


@pytest.mark.e2e
async def test_two_replicas_of_every_service_close_the_loop_with_exact_counts(stack: Stack) -> None:
    assert len(stack.children) == REPLICAS * len(SERVICES)
    urls = {name: stack.children[name].url for name in SERVICES}
    demo = await run_demo(stack.settings, OPTIONS, urls, show=False)
    r = demo.result
    story = (
        r.events_sent,
        r.detection_position,
        r.promotion_position,
        r.seconds_drift_to_promotion,
        dict(r.by_version),
    )
    assert demo.failures() == [], story
    settings, sent = stack.settings, demo.result.events_sent
    event_ids = {demo.event_id(position) for position in range(sent)}

    records = await read_topic(settings, "events.validated", sent)
    validated = Counter(EventValidated.model_validate_json(r.value).event_id for r in records)
    assert set(validated) == event_ids, "an event was lost or invented"
    assert max(validated.values()) == 1, [e for e, n in validated.items() if n > 1][:5]

    outcomes = await read_topic(settings, "driftloop-monitoring-outcomes", len(demo.result.predictions), timeout=60)
    scored = Counter(orjson.loads(r.value)["source_event_id"] for r in outcomes)
    assert max(scored.values()) == 1, [e for e, n in scored.items() if n > 1][:5]
    assert len(scored) >= len(demo.result.predictions) - 50, "monitoring scored far fewer than were predicted"

    runs = [parse_internal(r.value) for r in await read_topic(settings, "training.runs", 2)]
    completed = [r for r in runs if isinstance(r, TrainingRunCompleted)]
    assert [r.trigger for r in completed] == ["manual", "drift"], "one run for the first model, one per drift"

    registry = [parse_internal(r.value) for r in await read_topic(settings, "registry.events", 6)]
    promotions = [e for e in registry if isinstance(e, ModelPromoted)]
    assert [p.version for p in promotions] == [1, 2], "each version promoted exactly once"

    rollouts = [parse_internal(r.value) for r in await read_topic(settings, "deployment.events", 8)]
    by_instance: dict[str, list[int]] = {}
    for rollout in rollouts:
        if isinstance(rollout, RolloutCompleted):
            by_instance.setdefault(rollout.instance, []).append(rollout.version)
    assert len(by_instance) == REPLICAS, by_instance
    assert all(versions == sorted(versions) and versions[-1] == 2 for versions in by_instance.values()), by_instance
    for replica in range(REPLICAS):
        url = stack.children[child_name("deployment", replica)].url
        assert httpx.get(f"{url}/v1/deployments/{MODEL}", timeout=10).json()["version"] == 2
