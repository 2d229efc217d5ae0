"""The monitoring service (faust) on a real broker: joins late labels, counts once, detects concept drift."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from driftloop.bus import Bus
from driftloop.contracts import DriftDetected, LabelEvent, Prediction, utcnow
from driftloop.services.monitoring.main import create_app
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.settings import DriftloopSettings
from tests.support import read_topic, running

MODEL = "loan-approval"


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
