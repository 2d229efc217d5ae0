"""Faults that heal: a database outage is waited out, a record that breaks its batch is found and dead-lettered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import REGISTRY
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from driftloop.bus import Bus, ConsumerLoop, PoisonMessage, Record
from driftloop.contracts import DeadLetter, RetrainRequested
from driftloop.db import make_engine
from driftloop.settings import DriftloopSettings
from tests.fixtures.postgres import TERMINATE_SESSIONS, _admin
from tests.support import committed_offsets, read_topic


async def _committed(settings: DriftloopSettings, group: str) -> int:
    """How many records of ``training.requests`` the group has committed, over all partitions."""
    return sum((await committed_offsets(settings, settings.group(group), "training.requests")).values())


async def _committed_is(settings: DriftloopSettings, group: str, expected: int) -> bool:
    return await _committed(settings, group) == expected


def _retries(reason: str) -> float:
    labels = {"service": "test", "stage": "test.training.requests", "reason": reason}
    return REGISTRY.get_sample_value("driftloop_retries_total", labels) or 0.0


async def _until(condition: Callable[[], object], timeout: float = 60.0) -> None:
    """Wait for ``condition`` (a function, or one returning a coroutine) to hold."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


def _handled(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(text("SELECT event_id FROM handled")).scalars())


async def test_a_database_outage_is_waited_out_with_nothing_dead_lettered_or_lost(
    settings: DriftloopSettings, bus: Bus, postgres_db_url: str
) -> None:
    settings = settings.model_copy(update={"retry_backoff_seconds": 0.1, "retry_backoff_max_seconds": 0.4})
    engine = make_engine(postgres_db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE handled (event_id TEXT PRIMARY KEY, requested_by TEXT NOT NULL)"))
    database = make_url(postgres_db_url).database
    assert database is not None

    def insert(record: Record) -> None:
        event = record.parse(RetrainRequested)
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO handled VALUES (:id, :by) ON CONFLICT DO NOTHING"),
                {"id": event.event_id, "by": event.requested_by},
            )

    async def handler(record: Record) -> None:
        await asyncio.to_thread(insert, record)

    events = [RetrainRequested(model_name=f"m{i}", reason="manual", requested_by=f"ops{i}") for i in range(20)]
    for event in events:
        await bus.publish(event, key=event.model_name)

    # The database goes away: no new connection is accepted and the open ones are cut.
    _admin(postgres_db_url, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    _admin(postgres_db_url, TERMINATE_SESSIONS, database)
    engine.dispose()
    retries_before = _retries("database")
    loop = ConsumerLoop(settings, bus, service="test", topics=["training.requests"], group="outage", handler=handler)
    await loop.start()
    try:
        await _until(lambda: _retries("database") >= retries_before + 5)
        assert await _committed(settings, "outage") == 0, "an offset was committed while nothing was handled"
        assert loop.running

        _admin(postgres_db_url, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await _until(lambda: len(_handled(engine)) == len(events))
        await _until(lambda: _committed_is(settings, "outage", len(events)), timeout=30)
    finally:
        await loop.stop()
        engine.dispose()
    assert _handled(engine) == sorted(e.event_id for e in events)
    assert await read_topic(settings, "events.deadletter", 1, timeout=2) == []


async def test_a_record_that_breaks_its_batch_is_found_and_dead_lettered_and_the_rest_handled_once(
    settings: DriftloopSettings, bus: Bus
) -> None:
    events = [RetrainRequested(model_name="m", reason="manual", requested_by=f"ops{i}") for i in range(10)]
    events.insert(6, RetrainRequested(model_name="m", reason="manual", requested_by="crasher"))
    for event in events:
        await bus.publish(event, key="m")
    handled: list[str] = []

    async def predict(records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
        requests = [r.parse(RetrainRequested) for r in records]
        if any(r.requested_by == "crasher" for r in requests):
            raise RuntimeError("predictor crashed")
        handled.extend(r.requested_by for r in requests)
        return []

    loop = ConsumerLoop(
        settings,
        bus,
        service="test",
        topics=["training.requests"],
        group="bisect",
        batch_handler=predict,
        attempts=2,
        backoff_seconds=0.01,
    )
    await loop.start()
    try:
        letters = await read_topic(settings, "events.deadletter", 1)
        await _until(lambda: _committed_is(settings, "bisect", len(events)), timeout=30)
    finally:
        await loop.stop()
    assert sorted(handled) == sorted(f"ops{i}" for i in range(10)), "a record was lost or handled twice"
    assert len(letters) == 1
    letter = DeadLetter.model_validate_json(letters[0].value)
    crasher = events[6]
    assert letter.reason == "handler failed 2 times: RuntimeError('predictor crashed')"
    assert (letter.source_topic, letter.offset, letter.key) == ("training.requests", 6, "m")
    assert letter.headers["ce_id"] == crasher.event_id == letter.original_event_id
    assert RetrainRequested.model_validate_json(letter.payload) == crasher
    assert not letter.payload_truncated
