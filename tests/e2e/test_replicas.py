"""The loop with two replicas of every service: exact counts, one run, one promotion, never a step back.

Kafka spreads each service's partitions over its two replicas; what must have
one writer (the outbox relays, the claimed training run, the alias revision)
has it by lease or row lock. Duplicates would show here as an event validated
twice, an outcome scored twice, a second run or promotion, or a deployment
replica serving an older version after a newer one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from driftloop.broker import free_port
from driftloop.cli.demo import DemoOptions, run_demo
from driftloop.cli.stack import SERVICES, Stack, child_name
from driftloop.contracts import EventValidated, ModelPromoted, RolloutCompleted, TrainingRunCompleted, parse_internal
from driftloop.services.monitoring.join import outcome_dicts
from driftloop.services.monitoring.routing import OUTCOMES_TOPIC
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
async def monitored(stack: Stack, timeout: float = 60.0) -> dict[int, int]:
    """Observations per version, from whichever monitoring replica holds the model; once they stop changing."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            for replica in range(REPLICAS):
                response = await client.get(
                    f"{stack.children[child_name('monitoring', replica)].url}/v1/models/{MODEL}/metrics"
                )
                if response.status_code == 200:
                    now = {v["model_version"]: v["observations"] for v in response.json()["versions"]}
                    if now == seen:
                        return now
                    seen = now
            await asyncio.sleep(2.0)
    return seen


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

    counted = await monitored(stack)
    registry = [parse_internal(r.value) for r in await read_topic(settings, "registry.events", 6)]
    promotions = [e for e in registry if isinstance(e, ModelPromoted)]
    # Each promotion also rides the outcomes topic, as the track's note of the new champion.
    expected = sum(counted.values()) + len(promotions)
    records = await read_topic(
        settings, OUTCOMES_TOPIC, expected, timeout=60, weight=lambda r: len(outcome_dicts(r.value)) or 1
    )
    outcomes = [o for r in records for o in outcome_dicts(r.value)]
    sources: dict[tuple[str, int], set[tuple[int, int, int]]] = {}
    for o in outcomes:
        sources.setdefault((o["e"], o["v"]), set()).add((o["p"], o["o"], o["i"]))
    twice = [key for key, found in sources.items() if len(found) > 1]
    assert twice == [], f"predictions scored by two join records: {twice[:5]}"
    assert len(sources) >= len(demo.result.predictions) - 50, "monitoring scored far fewer than were predicted"
    per_version = Counter(version for _, version in sources)
    assert counted == dict(per_version), "a replayed outcome was counted again, or one was lost"

    runs = [parse_internal(r.value) for r in await read_topic(settings, "training.runs", 2)]
    completed = [r for r in runs if isinstance(r, TrainingRunCompleted)]
    assert [r.trigger for r in completed] == ["manual", "drift"], "one run for the first model, one per drift"

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
