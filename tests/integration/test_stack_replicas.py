"""``Stack`` with replicas: real processes on distinct ports, one consumer group, the partitions split between them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from driftloop.broker import EmbeddedBroker, free_port
from driftloop.bus import Bus
from driftloop.cli.stack import Stack
from driftloop.contracts import DataEvent, utcnow
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION

REPO = Path(__file__).resolve().parents[2]
EVENTS = 60


@pytest.fixture
def stack(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Stack]:
    settings = DriftloopSettings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"r{uuid.uuid4().hex[:8]}.",
        home=tmp_path / "home",
        config=REPO / "driftloop.yaml",
        kafka_session_timeout_ms=6000,
    )
    stack = Stack(
        settings,
        ports={"ingestion": free_port(), "ingestion#1": free_port()},
        env={"DRIFTLOOP_LOG_FORMAT": "json", "DRIFTLOOP_KAFKA_SESSION_TIMEOUT_MS": "6000"},
        replicas={"ingestion": 2},
    )
    try:
        stack.start(("ingestion",))
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


async def _members(settings: DriftloopSettings, group: str) -> tuple[str, list[str]]:
    """The group's state and member ids, as the group coordinator has them.

    Tansu reports members without their assignments, so the split itself is
    shown by what each replica handled.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        (described,) = response.groups
        return described[2], [member[0] for member in described[5]]
    finally:
        await admin.close()


def _consumed(url: str) -> float:
    """Records of ``events.raw`` this replica handled, from its own /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("driftloop_messages_consumed_total{") and 'topic="events.raw"' in line
    )


async def test_two_ingestion_replicas_listen_on_their_own_ports_and_share_the_partitions(stack: Stack) -> None:
    replicas = [stack.children["ingestion"], stack.children["ingestion#1"]]
    assert sorted(stack.children) == ["ingestion", "ingestion#1"]
    assert [(c.service, c.replica) for c in replicas] == [("ingestion", 0), ("ingestion", 1)]
    assert replicas[0].port != replicas[1].port and replicas[0].instance != replicas[1].instance
    for child in replicas:
        ready = httpx.get(f"{child.url}/readyz", timeout=5.0)
        assert ready.status_code == 200 and ready.json()["ready"] is True

    # Both replicas are members of the one group before anything is produced, so neither gets it all.
    group = stack.settings.group("ingestion")
    state, members = "", []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (state != "Stable" or len(members) != 2):
        await asyncio.sleep(0.5)
        state, members = await _members(stack.settings, group)
    assert (state, len(members)) == ("Stable", 2)

    bus = Bus(stack.settings, "test")
    await bus.start()
    try:
        async with bus.acknowledged():
            for i in range(EVENTS):
                event = DataEvent(
                    event_id=f"e{i}", entity_id=f"entity-{i}", event_time=utcnow(), features=dict(APPLICATION)
                )
                await bus.send("events.raw", event.model_dump_json().encode(), event.entity_id, [], wait=False)
    finally:
        await bus.stop()

    counts = [0.0, 0.0]
    while time.monotonic() < deadline + 60 and sum(counts) < EVENTS:
        counts = [_consumed(child.url) for child in replicas]
        await asyncio.sleep(0.5)
    assert sum(counts) == EVENTS, "every event handled once, by one replica or the other"
    assert all(count > 0 for count in counts), f"one replica handled everything: {counts}"
