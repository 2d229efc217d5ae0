"""The features service on a real broker: per-entity state, dedupe, online lookup, offline store."""

from __future__ import annotations

import asyncio

from driftloop.artifacts import open_store
from driftloop.bus import Bus
from driftloop.contracts import DeadLetter, EventValidated, FeatureVector, LabelEvent, utcnow
from driftloop.offline import OfflineStore
from driftloop.services.features.main import create_app
from driftloop.services.features.settings import FeaturesSettings
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION, read_topic, running


def _validated(event_id: str, entity: str, loan: float, label: int | None = None) -> EventValidated:
    return EventValidated(
        event_id=event_id, entity_id=entity, event_time=utcnow(), features={**APPLICATION, "loan": loan}, label=label
    )


async def test_entity_aggregates_dedupe_online_lookup_and_offline_rows(settings: DriftloopSettings, bus: Bus) -> None:
    events = [_validated("a1", "alice", 100.0, 1), _validated("b1", "bob", 50.0), _validated("a2", "alice", 300.0)]
    for event in events:
        await bus.publish(event, event.entity_id)
    await bus.publish(events[0], "alice")  # re-sent: must not count twice
    await bus.send("events.validated", b'{"broken": true}', "alice", [])
    await bus.publish(_validated("a3", "alice", 200.0, 0), "alice")
    await bus.publish(LabelEvent(event_id="b1", label=1), "b1")
    features = FeaturesSettings(**settings.model_dump(), offline_flush_seconds=0.2)
    async with running(create_app(features)) as client:
        vectors = [FeatureVector.model_validate_json(r.value) for r in await read_topic(settings, "features", 4)]
        letters = await read_topic(settings, "events.deadletter", 1)
        lookup = None
        for _ in range(50):
            response = await client.get("/v1/features/alice")
            if response.status_code == 200 and response.json()["applications"]["event_id"] == "a3":
                lookup = response.json()["applications"]
                break
            await asyncio.sleep(0.2)
        missing = await client.get("/v1/features/nobody")
        rows = []
        for _ in range(50):
            rows = OfflineStore(open_store(settings), "applications").training_set()
            if len(rows) == 3:
                break
            await asyncio.sleep(0.2)

    by_id = {v.event_id: v.features for v in vectors}
    assert sorted(by_id) == ["a1", "a2", "a3", "b1"], "the re-sent a1 made a second vector"
    assert (by_id["a1"]["entity_count"], by_id["a1"]["entity_mean_loan"]) == (1.0, 100.0)
    assert (by_id["a2"]["entity_count"], by_id["a2"]["entity_mean_loan"]) == (2.0, 200.0)
    assert (by_id["a3"]["entity_count"], by_id["a3"]["entity_mean_loan"]) == (3.0, 200.0)
    assert (by_id["b1"]["entity_count"], by_id["b1"]["entity_mean_loan"]) == (1.0, 50.0)
    letter = DeadLetter.model_validate_json(letters[0].value)
    assert letter.stage == "features.compute" and letter.source_topic == "events.validated"
    assert {e.field for e in letter.errors} >= {"entity_id", "features"}, (
        "what it lacks is named; an unknown field is ignored"
    )
    assert lookup is not None and lookup["features"]["entity_count"] == 3.0
    assert missing.status_code == 404
    assert sorted((r.event_id, r.label) for r in rows) == [("a1", 1), ("a3", 0), ("b1", 1)]
