"""A consumer is ready once it is in its group, and stops being ready while a dependency of its batches is down."""

from __future__ import annotations

import asyncio
import time

from driftloop.bus import Bus, ConsumerLoop, PoisonMessage, Record
from driftloop.contracts import RetrainRequested
from driftloop.settings import DriftloopSettings


async def _health_until(loop: ConsumerLoop, wanted: object, timeout: float = 60.0) -> bool | str:
    """The loop's health once it equals ``wanted`` (True) or starts with it (a reason), or at the deadline."""
    deadline = time.monotonic() + timeout
    health = loop.health()
    while time.monotonic() < deadline:
        health = loop.health()
        if health == wanted or (isinstance(health, str) and isinstance(wanted, str) and health.startswith(wanted)):
            break
        await asyncio.sleep(0.2)
    return health


async def test_readiness_follows_group_membership_and_progress(settings: DriftloopSettings, bus: Bus) -> None:
    settings = settings.model_copy(update={"consumer_stall_seconds": 2.0})
    broken = asyncio.Event()
    handled: list[str] = []

    async def handler(records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
        if broken.is_set():
            raise ConnectionRefusedError("the model server is down")
        handled.extend(r.event_id or "" for r in records)
        return []

    loop = ConsumerLoop(
        settings, bus, service="test", topics=["training.requests"], group="ready", batch_handler=handler
    )
    assert loop.health() == "not running"
    await loop.start()
    try:
        assert await _health_until(loop, True) is True
        assert loop.joined

        first = RetrainRequested(model_name="m", reason="manual", requested_by="test")
        await bus.publish(first, key="m")
        while first.event_id not in handled:
            await asyncio.sleep(0.1)
        # Caught up: nothing waits, so however long it idles it stays ready.
        assert await _health_until(loop, True) is True

        broken.set()
        await bus.publish(RetrainRequested(model_name="m", reason="manual", requested_by="test"), key="m")
        stalled = await _health_until(loop, "no progress")
        assert isinstance(stalled, str) and stalled.startswith("no progress for 2s: ")
        assert "training.requests[" in stalled and stalled.endswith("lag 1")

        broken.clear()
        assert await _health_until(loop, True) is True
        assert len(handled) == 2
    finally:
        await loop.stop()
    assert loop.health() == "not running"
