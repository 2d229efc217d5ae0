"""The monitoring service on a real broker: joins late labels, counts once, detects concept and data
drift, estimates accuracy without labels."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from driftloop.artifacts import open_store
from driftloop.bus import Bus
from driftloop.contracts import (
    DeadLetter,
    DriftDetected,
    DriftUnresolved,
    FeatureVector,
    LabelEvent,
    ModelPromoted,
    ModelVersionRegistered,
    Prediction,
    TrainingRunFailed,
    parse_internal,
    utcnow,
)
from driftloop.contracts.events import DataWindow
from driftloop.reference import Calibration, ReferenceSample, feature_columns, sample_indices
from driftloop.services.monitoring.main import create_app
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.settings import DriftloopSettings
from driftloop.streams import PARTITIONS
from tests.support import read_topic, running

MODEL = "loan-approval"
FEATURES = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]


async def test_late_labels_join_duplicates_count_once_and_drift_is_detected_with_evidence(
    settings: DriftloopSettings, bus: Bus
) -> None:
    rng = random.Random(1)
    start = utcnow() - timedelta(minutes=10)
    truth: dict[str, int] = {}
    async with bus.acknowledged():
        for i in range(1200):
            event_id = f"ev{i}"
            truth[event_id] = rng.randint(0, 1)
            wrong = rng.random() < (0.02 if i < 700 else 0.5)
            predicted = 1 - truth[event_id] if wrong else truth[event_id]
            late = i % 3 == 0
            prediction = Prediction(
                source_event_id=event_id,
                model_name=MODEL,
                model_version=1,
                channel="stream",
                prediction=predicted,
                event_time=start + timedelta(milliseconds=100 * i),
                label=None if late else truth[event_id],
            )
            await bus.publish(prediction, event_id, wait=False)
            if i < 5:
                await bus.publish(prediction.model_copy(update={"event_id": f"dup{i}"}), event_id, wait=False)
            if late:
                # Producers key labels as they like (here: none, or by entity); the join must still find them.
                key = None if i % 2 else f"entity-{i % 7}"
                await bus.publish(LabelEvent(event_id=event_id, label=truth[event_id]), key, wait=False)

    async with running(create_app(MonitoringSettings(**settings.model_dump()))) as client:
        drifts = [DriftDetected.model_validate_json(r.value) for r in await read_topic(settings, "drift", 1, 60)]
        metrics = {}
        for _ in range(100):
            metrics = (await client.get(f"/v1/models/{MODEL}/metrics")).json()
            if metrics.get("observations") == 1200:
                break
            await asyncio.sleep(0.3)
        state = (await client.get(f"/v1/models/{MODEL}/drift")).json()
        assert (await client.get("/v1/models/other/metrics")).status_code == 404

    assert metrics["observations"] == 1200, "every prediction scored once, late labels included, duplicates not"
    assert metrics["model_version"] == 1
    assert len(drifts) == 1
    drift = drifts[0]
    assert drift.kind == "concept" and drift.model_name == MODEL and drift.model_version == 1
    assert drift.accuracy_before is not None and drift.accuracy_before > 0.9
    assert drift.accuracy_after is not None and drift.accuracy_after < 0.75
    assert drift.observations >= 200, "no drift inside the grace period"
    assert drift.change_point_time is not None
    assert abs(drift.change_point_time - (start + timedelta(seconds=70))) < timedelta(seconds=15)
    assert state["drift_detected"] is True and state["events"][0]["event_id"] == drift.event_id


async def test_unlabelled_predictions_expire_past_the_horizon_and_a_label_within_it_still_joins(
    settings: DriftloopSettings, bus: Bus
) -> None:
    """REST traffic without labels: the join state keeps one horizon of entries per partition, not all of them."""
    horizon, count = 60, 600
    start = utcnow() - timedelta(hours=2)
    partitions = list(range(PARTITIONS))
    partition_of = {f"rest{i}": DefaultPartitioner()(f"rest{i}".encode(), partitions, partitions) for i in range(count)}
    async with bus.acknowledged():
        for i in range(count):
            prediction = Prediction(
                source_event_id=f"rest{i}",
                model_name=MODEL,
                model_version=1,
                channel="rest",
                prediction=i % 2,
                event_time=start + timedelta(seconds=i),
            )
            await bus.publish(prediction, prediction.source_event_id, wait=False)
    # Each partition drops what is more than the horizon older than its own latest event; one entry per event.
    latest = {p: max(i for i in range(count) if partition_of[f"rest{i}"] == p) for p in partitions}
    alive = [i for i in range(count) if i >= latest[partition_of[f"rest{i}"]] - horizon]
    expected = {f"rest{i}" for i in alive}

    app = create_app(MonitoringSettings(**settings.model_dump(), label_horizon=timedelta(seconds=horizon)))
    async with running(app) as client:
        pending = app.state.streams.pending
        keys: set[str] = set()
        for _ in range(200):
            keys = set(pending.keys())
            if keys == expected:
                break
            await asyncio.sleep(0.2)
        assert keys == expected
        assert len(keys) <= (horizon + 1) * PARTITIONS < count

        # Two events of one partition, so their labels and outcomes are handled in order: first one whose
        # prediction expired long ago, labelled so that joining it would count a wrong prediction; then a
        # recent one, labelled right. A first outcome that is correct shows the expired one never joined.
        last = count - 1
        gone = next(i for i in range(count) if partition_of[f"rest{i}"] == partition_of[f"rest{last}"])
        label_time = start + timedelta(seconds=last)
        for i, label in ((gone, 1 - gone % 2), (last, last % 2)):
            await bus.publish(LabelEvent(event_id=f"rest{i}", label=label, label_time=label_time), f"rest{i}")
        metrics = {}
        for _ in range(100):
            response = await client.get(f"/v1/models/{MODEL}/metrics")
            if response.status_code == 200:
                metrics = response.json()
                break
            await asyncio.sleep(0.2)
    assert (metrics["observations"], metrics["accuracy"]) == (1, 1.0), "only the label within the horizon joined"


async def test_entries_recovered_from_the_changelog_after_a_restart_expire_too(
    settings: DriftloopSettings, bus: Bus
) -> None:
    horizon = timedelta(seconds=60)
    start = utcnow() - timedelta(hours=2)
    monitoring = MonitoringSettings(**settings.model_dump(), label_horizon=horizon)

    async def predict(ids: range, offset: timedelta) -> None:
        async with bus.acknowledged():
            for i in ids:
                prediction = Prediction(
                    source_event_id=f"ev{i}",
                    model_name=MODEL,
                    model_version=1,
                    channel="rest",
                    prediction=1,
                    event_time=start + offset + timedelta(seconds=i),
                )
                await bus.publish(prediction, prediction.source_event_id, wait=False)

    async def pending_keys(app: Any, expected: set[str]) -> set[str]:
        keys: set[str] = set()
        for _ in range(150):
            keys = set(app.state.streams.pending.keys())
            if keys == expected:
                break
            await asyncio.sleep(0.2)
        return keys

    before = {f"ev{i}" for i in range(20)}
    await predict(range(20), timedelta(0))
    first = create_app(monitoring)
    async with running(first):
        assert await pending_keys(first, before) == before
    # An hour later in event time: everything from before the restart is past the horizon.
    await predict(range(100, 130), timedelta(hours=1))
    after = {f"ev{i}" for i in range(100, 130)}
    second = create_app(monitoring)
    async with running(second):
        assert await pending_keys(second, after) == after


async def test_labels_on_kafka_are_checked_like_http_ones_and_counts_hold_across_a_restart(
    settings: DriftloopSettings, bus: Bus
) -> None:
    """A string "1" for an int label, a label without event id and broken JSON are dead-lettered with reasons;
    a restart resumes from the tables, counting every outcome once."""
    start = utcnow() - timedelta(minutes=5)
    async with bus.acknowledged():
        for i in range(300):
            prediction = Prediction(
                source_event_id=f"ev{i}",
                model_name=MODEL,
                model_version=1,
                channel="rest",
                prediction=i % 2,
                event_time=start + timedelta(milliseconds=10 * i),
            )
            await bus.publish(prediction, prediction.source_event_id, wait=False)
        for i in range(100):
            await bus.publish(LabelEvent(event_id=f"ev{i}", label=0), f"ev{i}", wait=False)
        for bad in (b'{"event_id": "ev100", "label": "1"}', b'{"label": 1}', b'{"event_id": "ev101", "label": '):
            await bus.send("labels", bad, "ev100", [])
    monitoring = MonitoringSettings(**settings.model_dump())

    async def observed(client: Any, expected: int) -> dict[str, Any]:
        for _ in range(150):
            response = await client.get(f"/v1/models/{MODEL}/metrics")
            if response.status_code == 200 and response.json()["observations"] >= expected:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # anything counted twice would show by now
        return (await client.get(f"/v1/models/{MODEL}/metrics")).json()

    async with running(create_app(monitoring)) as client:
        first = await observed(client, 100)
        letters = [DeadLetter.model_validate_json(r.value) for r in await read_topic(settings, "events.deadletter", 3)]
    assert (first["observations"], first["accuracy"]) == (100, 0.5)
    assert {letter.stage for letter in letters} == {"monitoring.labels"}
    reasons = sorted(letter.reason for letter in letters)
    assert any("expected int, got str '1'" in r for r in reasons), reasons
    assert any(e.field == "event_id" for letter in letters for e in letter.errors)
    assert any(r.startswith("malformed JSON") for r in reasons)

    async with bus.acknowledged():
        for i in range(100, 300):
            await bus.publish(LabelEvent(event_id=f"ev{i}", label=1), f"ev{i}", wait=False)
    async with running(create_app(monitoring)) as client:
        second = await observed(client, 300)
    assert second["observations"] == 300, "the first 100 came back from the changelog, not counted again"
    assert second["accuracy"] == (50 + 100) / 300
    assert [v["observations"] for v in second["versions"]] == [300]


async def test_a_failed_drift_run_is_announced_and_the_drift_raised_again_while_it_persists(
    settings: DriftloopSettings, bus: Bus
) -> None:
    rng = random.Random(7)
    start = utcnow() - timedelta(minutes=30)

    async def predictions(first: int, count: int, error: float) -> None:
        async with bus.acknowledged():
            for i in range(first, first + count):
                truth = rng.randint(0, 1)
                prediction = Prediction(
                    source_event_id=f"ev{i}",
                    model_name=MODEL,
                    model_version=1,
                    channel="stream",
                    prediction=1 - truth if rng.random() < error else truth,
                    label=truth,
                    event_time=start + timedelta(milliseconds=100 * i),
                )
                await bus.publish(prediction, prediction.source_event_id, wait=False)

    async with running(create_app(MonitoringSettings(**settings.model_dump()))):
        await predictions(0, 700, 0.02)
        await predictions(700, 400, 0.5)
        first = [parse_internal(r.value) for r in await read_topic(settings, "drift", 1, 60)]
        assert len(first) == 1 and isinstance(first[0], DriftDetected)
        drift = first[0]
        await bus.publish(
            TrainingRunFailed(
                run_id="run-1", model_name=MODEL, trigger="drift", error="database down", **drift.caused()
            ),
            MODEL,
        )
        notices = [parse_internal(r.value) for r in await read_topic(settings, "drift", 2, 60)]
        assert isinstance(notices[1], DriftUnresolved)
        notice = notices[1]
        assert (notice.drift_event_id, notice.correlation_id, notice.attempts) == (
            drift.event_id,
            drift.correlation_id,
            1,
        )
        assert "database down" in notice.reason and notice.rearm_after == 200
        await predictions(1100, 600, 0.5)
        events = [parse_internal(r.value) for r in await read_topic(settings, "drift", 3, 60)]
    assert len(events) == 3 and isinstance(events[2], DriftDetected), events
    again = events[2]
    assert again.event_id != drift.event_id and again.model_version == 1
    assert again.change_point_time == drift.change_point_time, "the new run trains on the whole new regime"
    assert again.observations >= drift.observations + 200, "raised again only after the back-off"


def _application(rng: random.Random, age_shift: float = 0.0) -> dict[str, float | int]:
    return {
        "salary": rng.uniform(20_000, 150_000),
        "commission": rng.choice([0.0, rng.uniform(10_000, 75_000)]),
        "age": rng.uniform(20, 80) + age_shift,
        "elevel": rng.randint(0, 4),
        "car": rng.randint(1, 20),
        "zipcode": rng.randint(0, 8),
        "hvalue": rng.uniform(50_000, 900_000),
        "hyears": rng.randint(1, 30),
        "loan": rng.uniform(0, 500_000),
    }


#: A calibrated model: of the predictions served with probability ``1 - 1/k``, every k-th is wrong.
_WRONG_EVERY = (3, 4, 10, 30)


def _served(rng: random.Random, count: int) -> tuple[list[float], list[bool]]:
    """Probabilities drawn from the levels, and whether each prediction was right, exactly as the level says."""
    seen = dict.fromkeys(_WRONG_EVERY, 0)
    probabilities, right = [], []
    for k in (rng.choice(_WRONG_EVERY) for _ in range(count)):
        seen[k] += 1
        probabilities.append(1 - 1 / k)
        right.append(seen[k] % k != 0)
    return probabilities, right


async def test_a_covariate_shift_of_one_feature_is_data_drift_on_it_and_the_estimate_covers_the_accuracy(
    settings: DriftloopSettings, bus: Bus
) -> None:
    """The champion's reference comes from the artifact store the registry's events point at; the stream's
    feature vectors (age shifted in the second half, published once the first half was seen) and its
    predictions (stationary, labelled) arrive on every partition."""
    rng = random.Random(5)
    holdout, holdout_right = _served(rng, 600)
    reference = ReferenceSample(
        MODEL,
        "run-1",
        feature_columns([_application(rng) for _ in range(2000)], FEATURES, sample_indices(2000, 2000, "run-1")),
        predictions=[rng.randint(0, 1) for _ in holdout],
        probabilities=list(holdout),
        correct=holdout_right,
        calibration=Calibration.fit(holdout, holdout_right),
    )
    uri = open_store(settings).put(f"models/{MODEL}/run-1/reference.json", reference.to_bytes())
    now = utcnow()
    window = DataWindow(start=now - timedelta(hours=1), end=now, rows=2000, train_rows=1400, holdout_rows=600)
    registered = ModelVersionRegistered(
        model_name=MODEL, version=1, run_id="run-1", artifact_uri="file:///m", metrics={}, data_window=window
    )
    await bus.publish(registered.model_copy(update={"reference_uri": uri}), MODEL)
    await bus.publish(ModelPromoted(model_name=MODEL, version=1, artifact_uri="file:///m", actor="gate"), MODEL)

    count, start = 2000, now - timedelta(minutes=10)
    served, served_right = _served(rng, count)
    labels = [rng.randint(0, 1) for _ in range(count)]

    async def publish(events: range) -> None:
        async with bus.acknowledged():
            for i in events:
                event_time = start + timedelta(milliseconds=100 * i)
                features = _application(rng, age_shift=25.0 if i >= count // 2 else 0.0)
                vector = FeatureVector(
                    entity_id=f"c{i % 97}", event_time=event_time, feature_view="applications", features=features
                )
                await bus.publish(vector, vector.entity_id, wait=False)
                label, correct = labels[i], served_right[i]
                prediction = Prediction(
                    source_event_id=f"ev{i}",
                    model_name=MODEL,
                    model_version=1,
                    channel="stream",
                    prediction=label if correct else 1 - label,
                    probability=served[i],
                    label=label,
                    event_time=event_time,
                )
                await bus.publish(prediction, prediction.source_event_id, wait=False)

    def rows_seen() -> int:
        watch = app.state.streams.watch(MODEL)
        return watch.detector.observations if watch is not None and watch.detector is not None else 0

    await publish(range(count // 2))
    app = create_app(MonitoringSettings(**settings.model_dump()))
    async with running(app) as client:
        for _ in range(150):
            if rows_seen() == count:
                break
            await asyncio.sleep(0.2)
        assert rows_seen() == count
        assert await read_topic(settings, "drift", 99, 1) == [], "no drift before the shift"
        await publish(range(count // 2, count))
        metrics: dict[str, Any] = {}
        for _ in range(150):
            metrics = (await client.get(f"/v1/models/{MODEL}/metrics")).json()
            if metrics.get("observations") == count and metrics.get("estimated_accuracy") and rows_seen() == 2 * count:
                break
            await asyncio.sleep(0.3)
        exposition = (await client.get("/metrics")).text
        drifts = [DriftDetected.model_validate_json(r.value) for r in await read_topic(settings, "drift", 99, 3)]
        state = (await client.get(f"/v1/models/{MODEL}/drift")).json()
        history = (await client.get(f"/v1/models/{MODEL}/history", headers={"Origin": "http://dashboard"})).json()
        cors = (await client.get(f"/v1/models/{MODEL}/history", headers={"Origin": "http://dashboard"})).headers
        preflight = await client.options(
            f"/v1/models/{MODEL}/history",
            headers={"Origin": "http://dashboard", "Access-Control-Request-Method": "POST"},
        )

    assert [(d.kind, d.feature, d.model_version) for d in drifts] == [("data", "age", 1)], "no concept drift"
    drift = drifts[0]
    assert drift.evidence["p_adjusted"] <= 0.01 and drift.evidence["psi"] >= 0.1 and "ks" in drift.evidence
    assert count < drift.observations <= 2 * count, "found in the shifted half"
    realized = sum(served_right) / count
    assert metrics["observations"] == count and metrics["accuracy"] == realized
    lower, upper = metrics["estimated_interval"]
    assert lower <= realized <= upper, (realized, metrics["estimated_accuracy"], lower, upper)
    assert lower <= metrics["estimated_accuracy"] <= upper and upper - lower < 0.1
    assert metrics["versions"][0]["estimated_accuracy"] == metrics["estimated_accuracy"]
    assert f'driftloop_estimated_accuracy{{model="{MODEL}"}} {metrics["estimated_accuracy"]}' in exposition

    # The data drift is listed beside the concept drifts, and the history shows it with the checks around it.
    assert [e["event_id"] for e in state["events"]] == [drift.event_id]
    assert [(d["kind"], d["feature"], d["event_id"]) for d in history["drifts"]] == [("data", "age", drift.event_id)]
    age = [c for check in history["checks"] for c in check["columns"] if c["feature"] == "age"]
    assert any(a["drifted"] for a in age) and not age[0]["drifted"], "the checks before the shift saw no drift"
    assert all(check["model_version"] == 1 for check in history["checks"])
    realized_points = [p for p in history["accuracy"] if p["realized"] is not None]
    estimated = [p for p in history["accuracy"] if p["estimated"] is not None]
    # At most a point per track batch (up to 1,000 outcomes) and per 50 outcomes: how many depends on the batching.
    assert len(realized_points) >= 2 and all(p["model_version"] == 1 for p in realized_points)
    assert estimated
    assert all(low <= p["estimated"] <= high for p in estimated for low, high in [p["estimated_interval"]])
    assert [p["at"] for p in history["accuracy"]] == sorted(p["at"] for p in history["accuracy"])
    # The dashboard, on the registry's origin, may read it; nothing but reading is offered to other origins.
    assert cors["access-control-allow-origin"] == "*"
    assert preflight.status_code == 400
