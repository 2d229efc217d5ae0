"""Ingestion on a real broker: bad input is dead-lettered or refused with the field named; good input flows."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from aiokafka import AIOKafkaProducer

from driftloop.bus import Bus
from driftloop.bus.producer import cloudevent_headers
from driftloop.contracts import DeadLetter, EventValidated, LabelEvent, utcnow
from driftloop.services.ingestion.main import create_app
from driftloop.services.ingestion.settings import IngestionSettings
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION, read_topic, running


def _event(event_id: str, **features: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "entity_id": "applicant-1",
        "event_time": utcnow().isoformat(),
        "features": {**APPLICATION, **features},
        "label": 1,
    }


def _ingestion(settings: DriftloopSettings) -> IngestionSettings:
    return IngestionSettings(**settings.model_dump())


async def test_four_bad_records_on_events_raw_give_four_deadletters_and_the_valid_events_flow(
    settings: DriftloopSettings, bus: Bus
) -> None:
    missing = _event("bad-missing")
    del missing["entity_id"]
    raw = [
        json.dumps(_event("good-1")).encode(),
        b'{"event_id": "bad-json", "features": ',
        json.dumps(missing).encode(),
        json.dumps(_event("bad-type", age="forty")).encode(),
        json.dumps(_event("good-2")).encode(),
        json.dumps(_event("bad-range", age=250)).encode(),
        json.dumps(_event("good-3")).encode(),
    ]
    for value in raw:
        await bus.send("events.raw", value, "applicant-1", [])
    async with running(create_app(_ingestion(settings))):
        validated = await read_topic(settings, "events.validated", 3)
        letters = await read_topic(settings, "events.deadletter", 4)
    assert [EventValidated.model_validate_json(r.value).event_id for r in validated] == ["good-1", "good-2", "good-3"]
    assert all(r.key == "applicant-1" for r in validated)
    # Each record is the contract model's own JSON and CloudEvents headers, as a consumer of the topic reads it.
    for record in validated:
        event = EventValidated.model_validate_json(record.value)
        assert (event.correlation_id, event.entity_id, event.features, event.label) == (
            event.event_id,
            "applicant-1",
            APPLICATION,
            1,
        )
        assert record.value == event.model_dump_json().encode()
        expected = cloudevent_headers(event, "driftloop/ingestion", "applicant-1")
        assert record.headers == {name: value.decode() for name, value in expected}
    reasons = {DeadLetter.model_validate_json(r.value).offset: DeadLetter.model_validate_json(r.value) for r in letters}
    assert sorted(reasons) == [1, 2, 3, 5]
    assert "malformed JSON" in reasons[1].reason and reasons[1].payload.startswith('{"event_id": "bad-json"')
    assert [e.field for e in reasons[2].errors] == ["entity_id"] and "required" in reasons[2].errors[0].message.lower()
    assert [e.field for e in reasons[3].errors] == ["features.age"] and "expected int" in reasons[3].reason
    assert [e.field for e in reasons[5].errors] == ["features.age"] and "above the maximum" in reasons[5].reason
    assert {letter.stage for letter in reasons.values()} == {"ingestion.events.raw"}


async def test_http_bad_input_gets_422_naming_the_field_and_nothing_is_published(settings: DriftloopSettings) -> None:
    missing = _event("h-missing")
    del missing["event_time"]
    async with running(create_app(_ingestion(settings))) as client:
        malformed = await client.post("/v1/events", content=b"{oops", headers={"content-type": "application/json"})
        absent = await client.post("/v1/events", json=missing)
        wrong_type = await client.post("/v1/events", json=[_event("h-ok"), _event("h-type", salary="lots")])
        out_of_range = await client.post("/v1/events", json=_event("h-range", elevel=9))
        stale = await client.post("/v1/events", json={**_event("h-stale"), "event_time": "2001-01-01T00:00:00Z"})
        bad_label = await client.post("/v1/labels", json={"event_id": "x", "label": 7})
    assert [r.status_code for r in (malformed, absent, wrong_type, out_of_range, stale, bad_label)] == [422] * 6
    assert malformed.json()["detail"][0]["loc"] == ["body", "$"]
    assert absent.json()["detail"][0]["loc"] == ["body", "event_time"]
    assert wrong_type.json()["detail"] == [
        {"loc": ["body", 1, "features", "salary"], "msg": "expected float, got str 'lots'", "type": "value_error"}
    ]
    assert out_of_range.json()["detail"][0]["loc"] == ["body", "features", "elevel"]
    assert "above the maximum" in out_of_range.json()["detail"][0]["msg"]
    assert stale.json()["detail"][0]["loc"] == ["body", "event_time"]
    assert bad_label.json()["detail"][0]["loc"] == ["body", "label"]
    assert await read_topic(settings, "events.raw", 1, timeout=2) == []


async def test_http_accepts_an_object_an_array_and_ndjson(settings: DriftloopSettings) -> None:
    ndjson = "\n".join(json.dumps(_event(f"n{i}")) for i in range(3)).encode()
    async with running(create_app(_ingestion(settings))) as client:
        one = await client.post("/v1/events", json=_event("o1"))
        many = await client.post("/v1/events", json=[_event("a1"), _event("a2")])
        lines = await client.post("/v1/events", content=ndjson, headers={"content-type": "application/x-ndjson"})
        labels = await client.post("/v1/labels", json=[{"event_id": "o1", "label": 0}, {"event_id": "a1", "label": 1}])
        validated = await read_topic(settings, "events.validated", 6)
        label_records = await read_topic(settings, "labels", 2)
    assert [r.status_code for r in (one, many, lines, labels)] == [202] * 4
    assert lines.json() == {"accepted": 3, "event_ids": ["n0", "n1", "n2"]}
    ids = {EventValidated.model_validate_json(r.value).event_id for r in validated}
    assert ids == {"o1", "a1", "a2", "n0", "n1", "n2"}
    assert sorted((r.key, LabelEvent.model_validate_json(r.value).label) for r in label_records) == [
        ("a1", 1),
        ("o1", 0),
    ]


async def test_a_resent_event_is_validated_once(settings: DriftloopSettings, bus: Bus) -> None:
    event = json.dumps(_event("dup")).encode()
    for _ in range(3):
        await bus.send("events.raw", event, "applicant-1", [])
    await bus.send("events.raw", json.dumps(_event("after")).encode(), "applicant-1", [])
    async with running(create_app(_ingestion(settings))):
        validated = await read_topic(settings, "events.validated", 2)
        await asyncio.sleep(1.0)
        validated = await read_topic(settings, "events.validated", 3, timeout=2)
    assert [EventValidated.model_validate_json(r.value).event_id for r in validated] == ["dup", "after"]


async def test_freshness_is_judged_by_the_record_timestamp_not_by_when_it_is_consumed(
    settings: DriftloopSettings,
) -> None:
    """Records written a month ago, when their events were fresh, are read now: a replay or a long outage.

    Judged by the consumer's clock, every one of them would be dead-lettered as stale.
    """
    month_ago = utcnow() - timedelta(days=30)
    sent = [
        ("replayed-1", month_ago - timedelta(minutes=5), month_ago),
        ("replayed-2", month_ago - timedelta(hours=2), month_ago),
        ("stale-on-arrival", month_ago - timedelta(days=2), month_ago),
        ("fresh", utcnow(), None),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
    await producer.start()
    try:
        for event_id, event_time, written in sent:
            value = json.dumps({**_event(event_id), "event_time": event_time.isoformat()}).encode()
            timestamp_ms = int(written.timestamp() * 1000) if written else None
            await producer.send_and_wait(
                settings.topic("events.raw"), value, key=b"applicant-1", timestamp_ms=timestamp_ms
            )
    finally:
        await producer.stop()
    async with running(create_app(_ingestion(settings))):
        validated = await read_topic(settings, "events.validated", 3)
        letters = await read_topic(settings, "events.deadletter", 1)
    assert sorted(EventValidated.model_validate_json(r.value).event_id for r in validated) == [
        "fresh",
        "replayed-1",
        "replayed-2",
    ]
    (letter,) = [DeadLetter.model_validate_json(r.value) for r in letters]
    assert letter.offset == 2 and [e.field for e in letter.errors] == ["event_time"]
    assert "older than the freshness limit" in letter.reason
