"""The event bus against a real broker: contracts round-trip, commits follow effects, poison is dead-lettered."""

from __future__ import annotations

import asyncio

from driftloop.bus import Bus, ConsumerLoop, PoisonMessage, Record
from driftloop.contracts import DeadLetter, Envelope, RetrainRequested, payload_types, topic_for
from driftloop.settings import DriftloopSettings
from tests.support import read_topic, samples


async def test_every_contract_round_trips_through_the_broker_with_cloudevents_headers(
    settings: DriftloopSettings, bus: Bus
) -> None:
    events = samples()
    assert {type(e) for e in events} == set(payload_types()), "a payload type has no sample"
    for event in events:
        await bus.publish(event, key="k")
    for event in events:
        topic = topic_for(type(event))
        records = await read_topic(settings, topic, sum(topic_for(type(e)) == topic for e in events))
        matching = [r for r in records if r.headers["ce_type"] == event.EVENT_TYPE]
        assert matching, f"{event.EVENT_TYPE} not found on {topic}"
        record = matching[0]
        assert type(event).model_validate_json(record.value) == event
        assert record.key == "k"
        assert record.headers["ce_specversion"] == "1.0"
        assert record.headers["ce_source"] == "driftloop/test"
        if isinstance(event, Envelope):
            assert record.headers["ce_id"] == event.event_id
            assert record.headers["correlation_id"] == event.correlation_id


async def _consume_until(loop: ConsumerLoop, done: asyncio.Event, timeout: float = 30.0) -> None:
    await loop.start()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await loop.stop()


async def test_poison_message_goes_to_deadletter_and_stream_continues(settings: DriftloopSettings, bus: Bus) -> None:
    good = [RetrainRequested(model_name="m", reason="manual", requested_by=f"ops{i}") for i in range(3)]
    await bus.publish(good[0], "m")
    await bus.send("training.requests", b"{not json", "m", [])
    await bus.publish(good[1], "m")
    await bus.send("training.requests", b'{"model_name": 5}', "m", [])
    await bus.publish(good[2], "m")
    handled: list[str] = []
    done = asyncio.Event()

    async def handler(record: Record) -> None:
        handled.append(record.parse(RetrainRequested).requested_by)
        if len(handled) == 3:
            done.set()

    loop = ConsumerLoop(settings, bus, service="test", topics=["training.requests"], group="poison", handler=handler)
    await _consume_until(loop, done)
    assert handled == ["ops0", "ops1", "ops2"]
    letters = [DeadLetter.model_validate_json(r.value) for r in await read_topic(settings, "events.deadletter", 2)]
    assert len(letters) == 2
    assert letters[0].payload == "{not json" and "json" in letters[0].reason.lower()
    assert letters[0].offset == 1 and letters[0].source_topic == "training.requests"
    assert {e.field for e in letters[1].errors} >= {"model_name", "reason", "requested_by"}


async def test_failing_handler_is_retried_and_its_offset_committed_only_after_success(
    settings: DriftloopSettings, bus: Bus
) -> None:
    await bus.publish(RetrainRequested(model_name="m", reason="manual", requested_by="ops"), "m")
    attempts = 0
    done = asyncio.Event()

    async def flaky(record: Record) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("database is restarting")
        done.set()

    loop = ConsumerLoop(
        settings, bus, service="test", topics=["training.requests"], group="retry", handler=flaky, backoff_seconds=0.05
    )
    await _consume_until(loop, done)
    assert attempts == 3

    again = asyncio.Event()
    seen: list[Record] = []

    async def second(record: Record) -> None:
        seen.append(record)
        again.set()

    await bus.publish(RetrainRequested(model_name="m", reason="manual", requested_by="later"), "m")
    loop = ConsumerLoop(settings, bus, service="test", topics=["training.requests"], group="retry", handler=second)
    await _consume_until(loop, again)
    assert [r.parse(RetrainRequested).requested_by for r in seen] == ["later"], "the committed record came back"
    assert await read_topic(settings, "events.deadletter", 1, timeout=2) == []


async def test_a_handler_that_never_succeeds_is_dead_lettered_after_its_attempts(
    settings: DriftloopSettings, bus: Bus
) -> None:
    await bus.publish(RetrainRequested(model_name="m", reason="manual", requested_by="ops"), "m")
    calls = 0

    async def broken(record: Record) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    loop = ConsumerLoop(
        settings,
        bus,
        service="test",
        topics=["training.requests"],
        group="broken",
        handler=broken,
        attempts=3,
        backoff_seconds=0.01,
    )
    await loop.start()
    letters = await read_topic(settings, "events.deadletter", 1)
    await loop.stop()
    assert calls == 3
    letter = DeadLetter.model_validate_json(letters[0].value)
    assert "failed 3 times" in letter.reason and "bug" in letter.reason


async def test_a_redelivered_event_is_handled_once(settings: DriftloopSettings, bus: Bus) -> None:
    event = RetrainRequested(model_name="m", reason="manual", requested_by="ops")
    for _ in range(3):
        await bus.publish(event, "m")
    marker = RetrainRequested(model_name="m", reason="manual", requested_by="marker")
    await bus.publish(marker, "m")
    handled: list[str] = []
    done = asyncio.Event()

    async def handler(record: Record) -> None:
        handled.append(record.parse(RetrainRequested).event_id)
        if handled[-1] == marker.event_id:
            done.set()

    loop = ConsumerLoop(settings, bus, service="test", topics=["training.requests"], group="dedupe", handler=handler)
    await _consume_until(loop, done)
    assert handled == [event.event_id, marker.event_id]


def test_poison_message_names_every_invalid_field() -> None:
    record = Record("t", 0, 0, None, b'{"model_name": "m", "reason": "sometimes"}')
    try:
        record.parse(RetrainRequested)
    except PoisonMessage as exc:
        assert {e.field for e in exc.errors} == {"reason", "requested_by"}
    else:
        raise AssertionError("an invalid record parsed")
