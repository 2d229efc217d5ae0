"""Helpers the integration and end-to-end tests share: read a topic, build sample payloads."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI

from driftloop.artifacts import open_store, sha256_hex
from driftloop.auth import Role
from driftloop.broker import free_port
from driftloop.bus import Record
from driftloop.bus.metadata import topic_partitions
from driftloop.config import ModelSpec
from driftloop.contracts import (
    Contract,
    DataEvent,
    DeadLetter,
    DriftDetected,
    DriftUnresolved,
    EventValidated,
    FeatureVector,
    FieldError,
    LabelEvent,
    ModelPromoted,
    ModelRolledBack,
    ModelStaged,
    ModelVersionRegistered,
    Prediction,
    PromotionRejected,
    RetrainRequested,
    RolloutAborted,
    RolloutCompleted,
    RolloutStarted,
    RolloutStepped,
    TrainingRunCompleted,
    TrainingRunFailed,
    utcnow,
)
from driftloop.contracts.events import DataWindow, Features, GateDecision
from driftloop.db import TokenStore, make_engine
from driftloop.offline import TrainingRow
from driftloop.reference import Calibration, ReferenceSample
from driftloop.services.monitoring.datawatch import Row
from driftloop.services.training.domain import fit, holdout_record
from driftloop.settings import DriftloopSettings

APPLICATION = {
    "salary": 50_000.0,
    "commission": 10_000.0,
    "age": 40,
    "elevel": 2,
    "car": 5,
    "zipcode": 3,
    "hvalue": 150_000.0,
    "hyears": 10,
    "loan": 120_000.0,
}


async def committed_offsets(settings: DriftloopSettings, group: str, topic: str) -> dict[int, int]:
    """The offsets consumer group ``group`` (its full name) has committed on ``topic``, by partition."""
    tps = await topic_partitions(settings.bootstrap, [settings.topic(topic)])
    checker = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group, enable_auto_commit=False)
    await checker.start()
    try:
        offsets = {tp.partition: await checker.committed(tp) for tp in tps}
    finally:
        await checker.stop()
    return {partition: offset for partition, offset in offsets.items() if offset is not None}


async def read_topic(
    settings: DriftloopSettings,
    topic: str,
    expected: int,
    timeout: float = 30.0,
    weight: Callable[[Record], int] = lambda record: 1,
) -> list[Record]:
    """Every record of ``topic`` from its start, once ``expected`` have arrived (or the timeout passed); a record
    counts ``weight(record)`` towards ``expected`` (what it carries, for records that carry several)."""
    tps = await topic_partitions(settings.bootstrap, [settings.topic(topic)])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Record] = []
        arrived = 0
        deadline = time.monotonic() + timeout
        while arrived < expected and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                batch = [
                    Record(
                        topic=topic,
                        partition=m.partition,
                        offset=m.offset,
                        key=m.key.decode() if m.key else None,
                        value=m.value or b"",
                        headers={k: v.decode() for k, v in m.headers},
                    )
                    for m in messages
                ]
                records += batch
                arrived += sum(map(weight, batch))
        await asyncio.sleep(0)
        return records
    finally:
        await consumer.stop()


def loan_rows(n: int, flip: bool, seed: int, start_offset: int = 0) -> list[TrainingRow]:
    """Loan applications labelled by ``loan > 100k`` (or its opposite, after the drift), one a second."""
    rng = random.Random(seed)
    start = utcnow() - timedelta(hours=2) + timedelta(seconds=start_offset)
    rows = []
    for i in range(n):
        loan = rng.uniform(0, 200_000)
        features: Features = {**APPLICATION, "loan": loan, "salary": rng.uniform(20_000, 150_000)}
        label = int(loan > 100_000) ^ int(flip)
        rows.append(TrainingRow(f"{seed}-{i}", f"c{i % 50}", start + timedelta(seconds=i), features, label))
    return rows


def announced_run(
    settings: DriftloopSettings,
    run_id: str,
    flip: bool,
    seed: int,
    *,
    model: str = "loan-approval",
    features: list[str] | None = None,
    correlation: DriftDetected | None = None,
    shuffled: bool = False,
) -> TrainingRunCompleted:
    """A real model and timed holdout in the artifact store, announced as training announces a run.

    Runs with a higher seed lie later in time, so each one's holdout is outside the windows before it.
    ``shuffled`` trains on shuffled labels and labels the holdout with the model's own predictions: a
    worse model that the offline gate, fooled by its holdout, lets through.
    """
    spec = ModelSpec(
        name=model, feature_view="applications", features=features or list(APPLICATION), estimator="logistic_regression"
    )
    rows = loan_rows(400, flip, seed, start_offset=seed * 1000)
    train, holdout = rows[:280], rows[280:]
    if shuffled:
        labels = [r.label for r in train]
        random.Random(seed).shuffle(labels)
        train = [replace(r, label=label) for r, label in zip(train, labels, strict=True)]
    result = fit(spec, run_id, train, holdout)
    if shuffled:
        own, _ = result.artifact.predict([r.features for r in holdout])
        holdout = [replace(r, label=label) for r, label in zip(holdout, own, strict=True)]
    store = open_store(settings)
    model_bytes = result.artifact.to_bytes()
    lineage = correlation.caused() if correlation else {}
    return TrainingRunCompleted(
        **lineage,
        run_id=run_id,
        model_name=model,
        trigger="drift" if correlation else "manual",
        estimator=spec.estimator,
        feature_names=spec.features,
        data_window=DataWindow(
            start=rows[0].event_time, end=rows[-1].event_time, rows=400, train_rows=280, holdout_rows=120
        ),
        metrics=result.metrics,
        artifact_uri=store.put(f"models/{model}/{run_id}/model.skops", model_bytes),
        artifact_sha256=sha256_hex(model_bytes),
        holdout_uri=store.put(
            f"models/{model}/{run_id}/holdout.jsonl", "\n".join(json.dumps(holdout_record(r)) for r in holdout).encode()
        ),
        duration_seconds=0.1,
    )


def samples() -> list[Contract]:
    """One valid instance of every payload on the wire."""
    now = utcnow()
    window = DataWindow(start=now - timedelta(hours=1), end=now, rows=100, train_rows=70, holdout_rows=30)
    decision = GateDecision(
        metric="accuracy", challenger=0.9, champion=0.5, min_improvement=0.01, passed=True, reason="better"
    )
    rollout = {"model_name": "m", "version": 2, "previous_version": 1, "strategy": "direct", "instance": "r1"}
    return [
        DataEvent(event_id="e1", entity_id="c1", event_time=now, features=dict(APPLICATION), label=1),
        LabelEvent(event_id="e1", label=1, label_time=now),
        EventValidated(event_id="e1", entity_id="c1", event_time=now, features={"x": 1.5, "c": "red"}, label=None),
        DeadLetter(
            source_topic="events.raw",
            payload="{",
            reason="malformed JSON",
            stage="ingestion.events.raw",
            errors=[FieldError(field="$", message="malformed JSON")],
        ),
        FeatureVector(event_id="e1", entity_id="c1", event_time=now, feature_view="v", features={"x": 1.0}),
        Prediction(
            source_event_id="e1",
            model_name="m",
            model_version=1,
            channel="stream",
            prediction=1,
            probability=0.8,
            label=0,
        ),
        DriftDetected(
            model_name="m",
            model_version=1,
            kind="concept",
            detector="cusum",
            observations=500,
            window=120,
            accuracy_before=0.98,
            accuracy_after=0.5,
            change_point_time=now,
            evidence={"width": 120.0},
        ),
        DriftUnresolved(
            model_name="m",
            model_version=1,
            drift_event_id="d1",
            reason="training run r1 failed: database down",
            attempts=1,
            rearm_after=200,
        ),
        RetrainRequested(model_name="m", reason="manual", requested_by="ops"),
        TrainingRunCompleted(
            run_id="r1",
            model_name="m",
            trigger="drift",
            estimator="random_forest",
            params={"n_estimators": 10},
            feature_names=["x"],
            data_window=window,
            metrics={"accuracy": 0.9},
            artifact_uri="file:///a",
            holdout_uri="file:///h",
            duration_seconds=1.5,
        ),
        TrainingRunFailed(run_id="r2", model_name="m", trigger="manual", error="boom"),
        ModelVersionRegistered(
            model_name="m",
            version=2,
            run_id="r1",
            artifact_uri="file:///a",
            metrics={"accuracy": 0.9},
            parent_version=1,
            data_window=window,
        ),
        ModelPromoted(
            model_name="m", version=2, previous_version=1, artifact_uri="file:///a", actor="gate", decision=decision
        ),
        ModelStaged(
            model_name="m",
            version=3,
            champion_version=2,
            artifact_uri="file:///a",
            strategy="canary",
            actor="gate",
            decision=decision,
            revision=4,
        ),
        PromotionRejected(model_name="m", version=3, champion_version=2, decision=decision),
        ModelRolledBack(
            model_name="m", from_version=2, to_version=1, artifact_uri="file:///a", actor="ops", reason="bad"
        ),
        RolloutStarted(**rollout),
        RolloutStepped(
            **{**rollout, "strategy": "canary", "instance": "monitoring"},
            step=1,
            percent=25,
            previous_percent=5,
            evidence={"challenger_outcomes": 200.0, "lower": -0.01},
        ),
        RolloutCompleted(**rollout),
        RolloutAborted(**rollout, reason="cannot load"),
    ]


def issue_token(settings: DriftloopSettings, role: Role, name: str = "tests") -> str:
    """A token of ``role`` in the database the services of ``settings`` read their tokens from."""
    engine = make_engine(settings.db_url)
    try:
        return TokenStore(engine).issue(name, role)
    finally:
        engine.dispose()


@asynccontextmanager
async def running(app: FastAPI, role: Role | None = Role.admin) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan started, and a client that talks to it in-process.

    The client carries a fresh token of ``role`` (none when ``role`` is None),
    so tests about what an endpoint does are not tests of who may call it.
    """
    async with app.router.lifespan_context(app):
        headers = {}
        if role is not None:
            token = await asyncio.to_thread(issue_token, app.state.gatekeeper.settings, role)
            headers["Authorization"] = f"Bearer {token}"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as client:
            yield client


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """The app on a real port of this host, for clients that speak HTTP themselves (the CLI, MLflow's client).

    Yields its base URL once uvicorn has started it (lifespan included).
    """
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await task


def reference_sample(rng: random.Random, low: float = 0.5) -> ReferenceSample:
    """A reference of two numeric features (x ~ N(0, 1), y ~ N(5, 2)) and 600 holdout predictions whose
    probabilities, drawn from [``low``, 1], are calibrated: each is right with its own probability."""
    probabilities = [rng.uniform(low, 1.0) for _ in range(600)]
    correct = [rng.random() < p for p in probabilities]
    return ReferenceSample(
        "m",
        "r1",
        {"x": [rng.gauss(0, 1) for _ in range(2000)], "y": [rng.gauss(5, 2) for _ in range(2000)]},
        predictions=[rng.randint(0, 1) for _ in range(600)],
        probabilities=list(probabilities),
        correct=correct,
        calibration=Calibration.fit(probabilities, correct),
    )


def feature_rows(rng: random.Random, offsets: range, shift: float = 0.0) -> list[Row]:
    """Data-watch rows like ``reference_sample``'s, x shifted by ``shift``."""
    return [(o, None, {"x": rng.gauss(shift, 1), "y": rng.gauss(5, 2)}) for o in offsets]
