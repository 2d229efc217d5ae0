"""Throughput figures of the hot paths, printed, with the ratio to the obvious alternative where one exists.

Run with ``make bench``. Nothing here asserts a time: the figures are for
reading and comparing across changes on the same machine.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from river.datasets import synth

from driftloop.broker import EmbeddedBroker, free_port
from driftloop.bus import Bus, ensure_topics
from driftloop.config import load_config
from driftloop.contracts import utcnow
from driftloop.modeling import ModelArtifact, build_pipeline, select
from driftloop.services.ingestion.domain import SchemaCheck, validate_event
from driftloop.services.ingestion.main import create_app
from driftloop.services.ingestion.settings import IngestionSettings
from tests.support import read_topic, running

REPO = Path(__file__).resolve().parents[2]
CONFIG = load_config(REPO / "driftloop.yaml")


def applications(n: int) -> list[tuple[dict[str, float | int], int]]:
    return [
        ({k: float(v) if isinstance(v, float) else int(v) for k, v in x.items()}, int(y))
        for x, y in synth.Agrawal(seed=1).take(n)
    ]


def bench_validation(n: int = 20_000) -> None:
    now = utcnow()
    events = [
        {"event_id": f"e{i}", "entity_id": "c", "event_time": now.isoformat(), "features": x}
        for i, (x, _) in enumerate(applications(n))
    ]
    check = SchemaCheck(CONFIG.dataset)
    started = time.perf_counter()
    for event in events:
        validate_event(event, check, now)
    elapsed = time.perf_counter() - started
    print(f"validation (contract + schema): {n / elapsed:,.0f} events/s")


def bench_prediction(n: int = 2_000) -> None:
    data = applications(n)
    spec = CONFIG.models[0]
    pipeline = build_pipeline(spec.estimator, spec.params)
    pipeline.fit(select([x for x, _ in data], spec.features), [y for _, y in data])
    artifact = ModelArtifact(spec.name, "bench", list(spec.features), pipeline)
    rows = [x for x, _ in data[:500]]
    started = time.perf_counter()
    artifact.predict(rows)
    batched = len(rows) / (time.perf_counter() - started)
    started = time.perf_counter()
    for row in rows[:100]:
        artifact.predict([row])
    single = 100 / (time.perf_counter() - started)
    print(
        f"prediction, batches of 500: {batched:,.0f} rows/s; one at a time: {single:,.0f} rows/s; "
        f"ratio {batched / single:.1f}x"
    )


async def bench_ingestion(broker: EmbeddedBroker, n: int = 5_000) -> None:
    settings = IngestionSettings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
        home=Path("/tmp") / f"driftloop-bench-{uuid.uuid4().hex[:6]}",
        config=REPO / "driftloop.yaml",
        log_level="WARNING",
    )
    await ensure_topics(settings)
    bus = Bus(settings, "bench")
    await bus.start()
    now = utcnow().isoformat()
    async with bus.acknowledged():
        for i, (x, y) in enumerate(applications(n)):
            event = {"event_id": f"e{i}", "entity_id": f"c{i % 100}", "event_time": now, "features": x, "label": y}
            await bus.send("events.raw", json.dumps(event).encode(), f"c{i % 100}", [], wait=False)
    async with running(create_app(settings)):
        started = time.perf_counter()
        records = await read_topic(settings, "events.validated", n, timeout=300)
        elapsed = time.perf_counter() - started
    await bus.stop()
    print(
        f"ingestion service, events.raw -> events.validated on the embedded broker: "
        f"{len(records) / elapsed:,.0f} events/s ({len(records)} events, includes group join)"
    )


def main() -> None:
    bench_validation()
    bench_prediction()
    with EmbeddedBroker(free_port()) as broker:
        asyncio.run(bench_ingestion(broker))


if __name__ == "__main__":
    main()
