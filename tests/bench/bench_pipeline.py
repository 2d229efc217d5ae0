"""Throughput figures of the hot paths, printed, with the ratio to the obvious alternative where one exists.

Run with ``make bench``. Nothing here asserts a time: the figures are for
reading and comparing across changes on the same machine.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from river.datasets import synth

from driftloop.artifacts import open_store
from driftloop.broker import EmbeddedBroker, free_port
from driftloop.bus import Bus, Record, ensure_topics
from driftloop.bus.reader import ContractReader
from driftloop.config import load_config
from driftloop.contracts import EventValidated, FeatureVector, utcnow
from driftloop.contracts.events import Features
from driftloop.modeling import ModelArtifact, build_pipeline, select
from driftloop.offline import TrainingRow
from driftloop.runtime import tune_gc
from driftloop.services.features.settings import FeaturesSettings
from driftloop.services.features.streams import build
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


def on_broker(broker: EmbeddedBroker, work: Path) -> dict[str, Any]:
    """Settings of a service measured on ``broker``: topics and a home (under ``work``) of its own, so runs
    never meet."""
    return {
        "kafka_bootstrap": broker.bootstrap,
        "topic_prefix": f"bench{uuid.uuid4().hex[:6]}.",
        "home": work / uuid.uuid4().hex[:6],
        "config": REPO / "driftloop.yaml",
        "log_level": "WARNING",
    }


async def bench_ingestion(broker: EmbeddedBroker, work: Path, n: int = 5_000) -> None:
    settings = IngestionSettings(**on_broker(broker, work))
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


def encoded(
    bus: Bus, template: EventValidated | FeatureVector, changes: list[dict[str, Any]], topic: str
) -> list[Record]:
    """Records as the service reads them: encoded as their producer encodes them (``Bus.encode_many``)."""
    outgoing = bus.encode_many(template, changes, [change["entity_id"] for change in changes])
    return [Record(topic, 0, offset, None, value or b"") for offset, (_, value, _, _) in enumerate(outgoing)]


async def cpu_per_record(records: list[Record], handle: Callable[[list[Record]], Awaitable[object]]) -> float:
    """The process's CPU time for ``handle(records)``, in µs per record (threads it hands work to included)."""
    started = time.process_time()
    await handle(records)
    return (time.process_time() - started) / len(records) * 1e6


async def bench_stages(broker: EmbeddedBroker, work: Path, repeats: int = 20) -> None:
    """CPU per record of the features service's stages, each batch handler called in process on batches as the
    service sees them at 5,000 events/s (1,000 validated events over 1,000 entities; 5,000 vectors; 5,000
    labels), collected as the services collect (``tune_gc``); and of reading a vector as deployment reads it."""
    settings = FeaturesSettings(**on_broker(broker, work))
    await ensure_topics(settings)
    bus = Bus(settings, "features")
    await bus.start()
    streams = build(settings, CONFIG, bus, open_store(settings))
    compute, offline, labels = (streams.loops[name].batch_handler for name in ("compute", "offline", "labels"))
    assert compute is not None and offline is not None and labels is not None
    rows = [x for x, _ in applications(1000)]
    now = utcnow()

    def events(batch: int) -> list[Record]:
        changes = [
            {
                "event_id": f"e{batch}-{i}",
                "correlation_id": f"e{batch}-{i}",
                "entity_id": f"applicant-{i}",
                "event_time": now,
                "features": row,
                "label": None,
            }
            for i, row in enumerate(rows)
        ]
        return encoded(bus, EventValidated(**changes[0]), changes, "events.validated")

    async def fold(records: list[Record]) -> float:
        """``cpu_per_record`` of the compute stage's handler alone: its outputs leave, untimed, after it."""
        streams.tables.begin(0)
        async with bus.acknowledged():
            with streams.tables.attempt():
                spent = await cpu_per_record(records, compute)
            streams.tables.park()
        streams.tables.apply()
        return spent

    aggregates = {"entity_count": 3.0, "entity_mean_loan": 120_000.5}
    vectors = [
        {**change, "causation_id": change["event_id"], "features": {**change["features"], **aggregates}}
        for change in (
            {
                "event_id": f"v{i}",
                "correlation_id": f"v{i}",
                "entity_id": f"applicant-{i % 1000}",
                "event_time": now,
                "features": rows[i % 1000],
                "label": None,
            }
            for i in range(5000)
        )
    ]
    vector_records = encoded(bus, FeatureVector(**vectors[0], feature_view="applications"), vectors, "features")
    label_records = [
        Record("labels", 0, i, None, json.dumps({"event_id": f"v{i}", "label": i % 2}).encode()) for i in range(5000)
    ]
    reader = ContractReader(FeatureVector)

    async def parse(records: list[Record]) -> object:
        return [record.parse(FeatureVector) for record in records]

    async def read(records: list[Record]) -> object:
        return reader.read_all(records)

    await fold(events(-1))  # every entity known, as in a running service
    tune_gc(settings)
    figures: dict[str, list[float]] = {}
    for repeat in range(repeats):
        figures.setdefault("compute", []).append(await fold(events(repeat)))
        for name, records, handle in [
            ("offline", vector_records, offline),
            ("labels", label_records, labels),
            ("parse", vector_records, parse),
            ("read", vector_records, read),
        ]:
            figures.setdefault(name, []).append(await cpu_per_record(records, handle))
    await bus.stop()
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(
        f"features stages, CPU per record in process: compute {median['compute']:.1f} µs (batches of 1,000 events), "
        f"offline {median['offline']:.1f} µs (5,000 vectors to Parquet), labels {median['labels']:.1f} µs; "
        f"a feature vector read by ContractReader {median['read']:.1f} µs, by Record.parse {median['parse']:.1f} µs"
    )


def main() -> None:
    bench_validation()
    bench_prediction()
    bench_data_drift()
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp, EmbeddedBroker(free_port()) as broker:
        asyncio.run(bench_ingestion(broker, Path(tmp)))
        asyncio.run(bench_stages(broker, Path(tmp)))


if __name__ == "__main__":
    main()
