"""Throughput figures of the hot paths, printed, with the ratio to the obvious alternative where one exists.

Run with ``make bench``. Nothing here asserts a time: the figures are for
reading and comparing across changes on the same machine.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from river.datasets import synth

from driftloop.broker import EmbeddedBroker, free_port
from driftloop.bus import Bus, ensure_topics
from driftloop.config import load_config
from driftloop.contracts import utcnow
from driftloop.contracts.events import Features
from driftloop.modeling import ModelArtifact, build_pipeline, select
from driftloop.offline import TrainingRow
from driftloop.services.ingestion.domain import SchemaCheck, validate_event
from driftloop.services.ingestion.main import create_app
from driftloop.services.ingestion.settings import IngestionSettings
from driftloop.services.monitoring.datadrift import PREDICTION, PROBABILITY, DataDriftDetector, ReferenceProfile
from driftloop.services.monitoring.datawatch import FEATURES, PREDICTIONS, DataWatch, Row, RowBatch, VersionReference
from driftloop.services.training.domain import fit, reference_sample, refit, time_split
from tests.datadrift_oracle import StraightDetector
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


def produced(n: int, seed: int) -> list[tuple[Features, int]]:
    """Agrawal applications as the demo's producer sends them, amounts rounded to cents."""
    return [
        ({k: round(v, 2) if isinstance(v, float) else int(v) for k, v in x.items()}, int(y))
        for x, y in synth.Agrawal(seed=seed).take(n)
    ]


def routed_batches(n: int, seed: int, served: ModelArtifact, rows: int = 111) -> list[RowBatch]:
    """Events as monitoring's router hands them on at 5,000 events/s: a poll of 1,000 records (a third each
    features, predictions and labels) becomes one batch of feature rows and one of prediction rows per
    partition of three, about 111 rows each."""
    events = produced(n, seed)
    predictions, probabilities = served.predict([x for x, _ in events])
    batches = []
    for start in range(0, n, 3 * rows):
        for partition in range(3):
            offsets = range(start + partition, min(start + 3 * rows, n), 3)
            features: list[Row] = [(o, None, events[o][0]) for o in offsets]
            batches.append(RowBatch(served.model_name, FEATURES, partition, features))
        for partition in range(3):
            offsets = range(start + partition, min(start + 3 * rows, n), 3)
            predicted: list[Row] = [
                (o, 1, {PREDICTION: predictions[o], PROBABILITY: probabilities[o]}) for o in offsets
            ]
            batches.append(RowBatch(served.model_name, PREDICTIONS, partition, predicted))
    return batches


def bench_data_drift(n: int = 60_000, repeats: int = 3) -> None:
    """Rows per second of CPU through monitoring's data watch at the policy of ``driftloop.yaml``, against a
    reference built as training builds it (4,000 rows, the reference its 2,000-row sample); and the detector
    alone against the straightforward computation of every check (``tests.datadrift_oracle``)."""
    spec, policy = CONFIG.models[0], CONFIG.drift.data
    start = datetime(2026, 1, 1, tzinfo=UTC)
    window = [
        TrainingRow(f"t{i}", f"e{i % 500}", start + timedelta(seconds=i), dict(x), y)
        for i, (x, y) in enumerate(produced(CONFIG.training.max_rows, seed=2))
    ]
    train, holdout = time_split(window, CONFIG.training.holdout_fraction)
    gated = fit(spec, "bench", train, holdout).artifact
    sample = reference_sample(spec, "bench", gated, window, holdout, policy.reference_rows)
    reference = VersionReference.from_sample(sample, policy)
    batches = routed_batches(n, 7, refit(spec, "bench", window))
    rows = sum(len(b.rows) for b in batches)

    def watched() -> float:
        watch = DataWatch(spec.name, policy, CONFIG.drift.estimation)
        watch.switch(1, reference)
        started = time.process_time()
        for batch in batches:
            watch.apply(batch, at=0.0)
        return rows / (time.process_time() - started)

    def detected(make: Callable[[], DataDriftDetector | StraightDetector]) -> float:
        detector = make()
        chunks = [[values for _, _, values in batch.rows] for batch in batches]
        started = time.process_time()
        for chunk in chunks:
            detector.update(chunk)
        return rows / (time.process_time() - started)

    first = watched()  # KS p-values are remembered across detectors: the first pass meets them all anew
    watch = statistics.median(watched() for _ in range(repeats))
    profile = ReferenceProfile.from_sample(sample, policy)
    incremental = statistics.median(
        detected(lambda: DataDriftDetector(spec.name, 1, profile, policy)) for _ in range(repeats)
    )
    straight = statistics.median(detected(lambda: StraightDetector(profile, policy)) for _ in range(repeats))
    print(
        f"data drift (DataWatch.apply, window {policy.window}, check every {policy.check_every}, "
        f"{len(profile.columns)} columns, {rows:,} rows in batches of ~111): {watch:,.0f} rows/s of CPU "
        f"({1e6 / watch:.2f} us per row; first pass {first:,.0f} rows/s); the detector alone {incremental:,.0f} "
        f"rows/s against {straight:,.0f} computing each check from the windows' values, ratio "
        f"{incremental / straight:.1f}x"
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
    bench_data_drift()
    with EmbeddedBroker(free_port()) as broker:
        asyncio.run(bench_ingestion(broker))


if __name__ == "__main__":
    main()
