"""A guarded stream batch is done only when its table changes are on the broker, so no commit can precede them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import faust
import orjson

from driftloop.bus import Bus
from driftloop.settings import DriftloopSettings
from driftloop.streams import Emitter, StreamSettings, batches, raw_topic, recovered, started, state_table, stream_app
from tests.support import committed_offsets, read_topic


async def test_a_guarded_batch_returns_with_its_table_changes_acknowledged_by_the_broker(
    settings: DriftloopSettings, bus: Bus
) -> None:
    """Without the wait, faust's producer buffer still holds the batch's changelog records when the handler
    returns; its own flush before a commit gives up on a busy loop, and a stop then loses them."""
    stream = StreamSettings(**settings.model_dump(), service="durable")
    app = stream_app(stream, "durable")
    entries = state_table(app, "entries", batched=True)
    source = raw_topic(app, stream, "durable-source", internal=True)
    emitter = Emitter(app, stream)
    left_in_buffer: list[int] = []
    handled: list[str] = []

    async def write(events: Sequence[faust.EventT[Any]]) -> None:
        for event in events:
            key = cast(bytes, event.key).decode()
            entries[key] = orjson.loads(event.value)
            handled.append(key)

    @app.agent(source)
    async def work(events_stream: faust.StreamT[Any]) -> None:
        async for events in batches(app, events_stream, 40, 0.2):
            await emitter.guard_batch(events, "durable", write)
            left_in_buffer.append(app.producer.buffer.size)

    async with started(app, stream):
        await recovered(app, 60)
        async with bus.acknowledged():
            for i in range(120):
                await bus.send("durable-source", orjson.dumps({"n": i}), f"k{i}", [], wait=False)
        for _ in range(300):
            if len(handled) >= 120:
                break
            await asyncio.sleep(0.1)
        assert sorted(handled) == sorted(f"k{i}" for i in range(120))
        assert left_in_buffer and set(left_in_buffer) == {0}, left_in_buffer
        changelog = await read_topic(settings, "driftloop-durable-entries-changelog", 120, timeout=10)
    assert {orjson.loads(r.key or "null"): orjson.loads(r.value) for r in changelog} == {
        f"k{i}": {"n": i} for i in range(120)
    }


async def test_a_batch_still_in_its_handler_when_the_service_stops_is_not_committed(
    settings: DriftloopSettings, bus: Bus
) -> None:
    """faust stops a stream without waiting for its agent and acknowledges the batch it handed out; a batch
    waiting out an outage at a stop would be committed without its effects."""
    stream = StreamSettings(**settings.model_dump(), service="durable")
    app = stream_app(stream, "halfway")
    source = raw_topic(app, stream, "halfway-source", internal=True)
    emitter = Emitter(app, stream)
    began, outage_over = asyncio.Event(), asyncio.Event()

    async def waiting(events: Sequence[faust.EventT[Any]]) -> None:
        began.set()
        await outage_over.wait()

    @app.agent(source)
    async def work(events_stream: faust.StreamT[Any]) -> None:
        async for events in batches(app, events_stream, 40, 0.2):
            await emitter.guard_batch(events, "halfway", waiting)

    async with started(app, stream):
        await recovered(app, 60)
        async with bus.acknowledged():
            for i in range(20):
                await bus.send("halfway-source", orjson.dumps({"n": i}), f"k{i}", [], wait=False)
        await asyncio.wait_for(began.wait(), 30)
        await asyncio.sleep(2.5)  # past faust's commit interval
    outage_over.set()
    await asyncio.sleep(0.5)
    assert await committed_offsets(settings, settings.group("halfway"), "halfway-source") == {}
