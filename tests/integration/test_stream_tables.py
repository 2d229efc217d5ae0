"""A stateful stage's tables on the real broker: changes after outputs, commits after changes, rebuilt where
partitions go."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson

from driftloop.bus import Bus, ConsumerLoop, PoisonMessage, Record
from driftloop.settings import DriftloopSettings
from driftloop.streams import StreamSettings, Table, Tables, create_internal
from tests.support import committed_offsets, read_topic

Handler = Callable[[list[Record]], Awaitable[list[tuple[Record, PoisonMessage]]]]


def stage(settings: StreamSettings, bus: Bus, name: str, handler: Handler, tables: Tables) -> ConsumerLoop:
    return ConsumerLoop(
        settings,
        bus,
        service="test",
        topics=[f"{name}-source"],
        group=name,
        batch_handler=handler,
        state=tables,
        batch_size=40,
        dedupe_key=None,
    )


async def send(bus: Bus, topic: str, keys: list[str], tag: str) -> None:
    async with bus.acknowledged():
        for key in keys:
            await bus.send(topic, orjson.dumps({"id": f"{tag}-{key}"}), key, [], wait=False)


async def until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_a_batch_sends_its_table_changes_only_once_its_outputs_are_on_the_broker(
    settings: DriftloopSettings, bus: Bus
) -> None:
    """Outputs that fail leave the changelog untouched; once they are sent, every change is on the changelog
    before the offsets are committed."""
    stream = StreamSettings(**settings.model_dump(), service="test")
    await create_internal(stream, "ordered-source", "ordered-out")
    entries = Table("entries")
    tables = Tables(stream, "ordered", entries)
    failures = {"left": 2}
    seen: list[int] = []

    async def handle(records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
        for record in records:
            entries[record.key or ""] = orjson.loads(record.value)
        if failures["left"]:
            failures["left"] -= 1
            seen.append(len(await read_topic(settings, tables.changelog(entries), 1, timeout=0.5)))
            # A partition the topic does not have: the producer refuses the batch's outputs.
            bus.defer("ordered-out", [(b"x", b"x", [], 99)])
            return []
        bus.defer("ordered-out", [(r.key.encode() if r.key else None, r.value, [], None) for r in records])
        return []

    loop = stage(stream, bus, "ordered", handle, tables)
    await loop.start()
    try:
        await send(bus, "ordered-source", [f"k{i}" for i in range(30)], "a")
        group = settings.group("ordered")
        await until(lambda: not failures["left"])

        async def committed() -> int:
            return sum((await committed_offsets(settings, group, "ordered-source")).values())

        for _ in range(300):
            if await committed() == 30:
                break
            await asyncio.sleep(0.1)
        changelog = await read_topic(settings, tables.changelog(entries), 30, timeout=10)
        outputs = await read_topic(settings, "ordered-out", 30, timeout=10)
    finally:
        await loop.stop()
    assert seen == [0, 0], "a change reached the changelog while its batch's outputs had failed"
    assert {r.key: orjson.loads(r.value) for r in changelog} == {f"k{i}": {"id": f"a-k{i}"} for i in range(30)}
    assert sorted(r.key or "" for r in outputs) == sorted(f"k{i}" for i in range(30))


async def test_a_batch_still_in_its_handler_when_the_stage_stops_is_not_committed(
    settings: DriftloopSettings, bus: Bus
) -> None:
    stream = StreamSettings(**settings.model_dump(), service="test")
    await create_internal(stream, "halfway-source")
    entries = Table("entries")
    began, outage_over = asyncio.Event(), asyncio.Event()

    async def waiting(records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
        for record in records:
            entries[record.key or ""] = {"n": 1}
        began.set()
        await outage_over.wait()
        return []

    loop = stage(stream, bus, "halfway", waiting, Tables(stream, "halfway", entries))
    await loop.start()
    await send(bus, "halfway-source", [f"k{i}" for i in range(20)], "a")
    await asyncio.wait_for(began.wait(), 60)
    await asyncio.sleep(1.5)
    await loop.stop()
    outage_over.set()
    assert await committed_offsets(settings, settings.group("halfway"), "halfway-source") == {}
    assert await read_topic(settings, "driftloop-halfway-entries-changelog", 1, timeout=1) == []


async def test_partitions_moving_between_replicas_keep_every_change_and_a_restart_rebuilds_the_table(
    settings: DriftloopSettings, bus: Bus
) -> None:
    """Each key's entry collects the ids of its records: after a replica joins, the first leaves and a new one
    starts from the changelog alone, every id sent is in its key's entry and nothing else is."""
    stream = StreamSettings(**settings.model_dump(), service="test")
    await create_internal(stream, "moving-source")
    keys = [f"k{i}" for i in range(60)]

    def replica() -> tuple[ConsumerLoop, Table, Tables]:
        entries = Table("entries")
        tables = Tables(stream, "moving", entries)

        async def collect(records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
            for record in records:
                key = record.key or ""
                ids = entries.get(key, {"ids": []})["ids"]
                entries[key] = {"ids": sorted({*ids, orjson.loads(record.value)["id"]})}
            return []

        return stage(stream, bus, "moving", collect, tables), entries, tables

    def complete(entries: Table, rounds: list[str]) -> bool:
        return all(entries.get(key) == {"ids": sorted(f"{r}-{key}" for r in rounds)} for key in keys)

    first, first_entries, _ = replica()
    await first.start()
    await send(bus, "moving-source", keys, "r1")
    await until(lambda: complete(first_entries, ["r1"]))

    second, second_entries, second_tables = replica()
    await second.start()
    await send(bus, "moving-source", keys, "r2")
    await until(lambda: second_tables.ready(0) or second_tables.ready(1) or second_tables.ready(2))
    await first.stop()
    await send(bus, "moving-source", keys, "r3")
    await until(lambda: all(second_tables.ready(p) for p in range(3)))
    await until(lambda: complete(second_entries, ["r1", "r2", "r3"]))
    await second.stop()

    third, third_entries, third_tables = replica()
    await third.start()
    try:
        await until(lambda: all(third_tables.ready(p) for p in range(3)))
        assert complete(third_entries, ["r1", "r2", "r3"])
    finally:
        await third.stop()
