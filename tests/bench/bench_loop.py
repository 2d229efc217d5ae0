"""Throughput of the pipeline against what the broker carries, measured side by side in one run.

(a) ingestion (``events.raw`` -> ``events.validated``) against a bare aiokafka
consume -> produce pass-through over the same topics, same broker, same input;
(b) the whole loop at a fixed offered rate: events and labels in, monitoring's
outcomes out, with the end-to-end latency of each event (its send time to
the broker's timestamp of its outcome) and the lag left when the offered
window ends.

Run through ``make bench`` (``tests.bench``), which writes the JSON result.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from river.datasets import synth

from driftloop.broker import BrokerProcess, EmbeddedBroker, LocalKafka, free_port
from driftloop.bus import Bus, Outgoing, ensure_topics, topic_partitions
from driftloop.cli.governance import local_admin_token
from driftloop.cli.stack import SERVICES, Stack, child_name
from driftloop.contracts import utcnow
from driftloop.services.ingestion.main import create_app
from driftloop.services.ingestion.settings import IngestionSettings
from driftloop.services.monitoring.join import outcome_dicts
from driftloop.services.monitoring.routing import OUTCOMES_TOPIC
from driftloop.settings import DriftloopSettings
from tests.support import running

REPO = Path(__file__).resolve().parents[2]
MODEL = "loan-approval"


def bench_broker(kind: str, home: Path) -> BrokerProcess:
    """The broker a bench runs on: the embedded one, or a local Apache Kafka like the Kafka test tier's."""
    if kind == "kafka":
        return LocalKafka(free_port(), home / "kafka", log_path=home / "broker.log")
    return EmbeddedBroker(free_port(), log_path=home / "broker.log")


def bench_settings(bootstrap: str, home: Path, config: Path = REPO / "driftloop.yaml") -> DriftloopSettings:
    return DriftloopSettings(
        kafka_bootstrap=bootstrap,
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
        home=home / uuid.uuid4().hex[:8],
        config=config,
        log_level="WARNING",
    )


def applications(n: int, seed: int = 1) -> Iterator[tuple[dict[str, Any], int]]:
    for x, y in synth.Agrawal(classification_function=0, seed=seed).take(n):
        yield {k: (round(v, 2) if isinstance(v, float) else int(v)) for k, v in x.items()}, int(y)


def event_bytes(i: int, features: dict[str, Any], tag: str) -> tuple[bytes, bytes]:
    entity = f"applicant-{i % 1000}"
    event = {"event_id": f"{tag}-{i}", "entity_id": entity, "event_time": utcnow().isoformat(), "features": features}
    return entity.encode(), orjson.dumps(event)


async def produce_raw(settings: DriftloopSettings, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = []
        for i, (features, _) in enumerate(applications(n)):
            key, value = event_bytes(i, features, "e")
            futures.append(await producer.send(settings.topic("events.raw"), value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


#: ``seconds_until(n, timeout)``: seconds from a topic's first record to its ``n``-th, or None on timeout.
Clock = Callable[[int, float], Awaitable[float | None]]


@asynccontextmanager
async def output_clock(settings: DriftloopSettings, topic: str) -> AsyncIterator[Clock]:
    """Times how long ``topic`` takes from its first record to its ``n``-th, counted by reading them.

    Starting at the first output leaves a consumer group's join out of the
    figure. Records are counted by reading, not from end offsets: Tansu 0.6
    reports end offsets that do not count the records of a batch.
    """
    tps = await topic_partitions(settings.bootstrap, [settings.topic(topic)])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)

    async def seconds_until(n: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        first, seen = None, 0
        while time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=50, max_records=10_000)).values():
                seen += len(messages)
            if seen and first is None:
                first = time.monotonic()
            if seen >= n:
                return time.monotonic() - (first or time.monotonic())
        return None

    try:
        yield seconds_until
    finally:
        await consumer.stop()


async def passthrough(settings: DriftloopSettings, stop: asyncio.Event) -> None:
    """The peer: consume ``events.raw`` in a group and produce every record to ``events.validated`` as is."""
    consumer = AIOKafkaConsumer(
        settings.topic("events.raw"),
        bootstrap_servers=settings.bootstrap,
        group_id=settings.group("passthrough"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            for tp, messages in batches.items():
                futures = [
                    await producer.send(settings.topic("events.validated"), m.value, key=m.key) for m in messages
                ]
                await asyncio.gather(*futures)
                await consumer.commit({tp: messages[-1].offset + 1})
    finally:
        await consumer.stop()
        await producer.stop()


@dataclass
class IngestionResult:
    events: int
    ingestion_seconds: float | None
    passthrough_seconds: float | None

    @property
    def ingestion_eps(self) -> float | None:
        return self.events / self.ingestion_seconds if self.ingestion_seconds else None

    @property
    def passthrough_eps(self) -> float | None:
        return self.events / self.passthrough_seconds if self.passthrough_seconds else None

    def as_dict(self) -> dict[str, Any]:
        ratio = self.ingestion_eps / self.passthrough_eps if self.ingestion_eps and self.passthrough_eps else None
        return {
            **asdict(self),
            "ingestion_events_per_s": self.ingestion_eps,
            "passthrough_events_per_s": self.passthrough_eps,
            "ratio": ratio,
        }


async def bench_ingestion(bootstrap: str, home: Path, n: int) -> IngestionResult:
    """Both read the same kind of input from their own topics; the clock runs from first output to the last."""
    peer = bench_settings(bootstrap, home)
    ours = bench_settings(bootstrap, home)
    for settings in (peer, ours):
        await ensure_topics(settings)
        await produce_raw(settings, n)

    stop = asyncio.Event()
    async with output_clock(peer, "events.validated") as seconds_until:
        task = asyncio.create_task(passthrough(peer, stop))
        passthrough_seconds = await seconds_until(n, 600)
        stop.set()
        await task
    async with (
        output_clock(ours, "events.validated") as seconds_until,
        running(create_app(IngestionSettings(**ours.model_dump()))),
    ):
        ingestion_seconds = await seconds_until(n, 600)
    return IngestionResult(n, ingestion_seconds, passthrough_seconds)


@dataclass
class LoopResult:
    offered_rate: float
    seconds: float
    replicas: int
    events_sent: int = 0
    #: Events with an outcome, each counted once; ``repeated`` counts the outcomes of an event already scored.
    outcomes: int = 0
    repeated: int = 0
    #: Outcomes per second while the load was offered, and the lag (events without outcome) when it ended.
    sustained_rate: float = 0.0
    #: Outcomes per second from a quarter into the offered window to its end: the rate the loop keeps once its
    #: pipeline is full, without the first second or so in which no outcome can have come yet.
    steady_rate: float = 0.0
    #: All the events offered over the time until the last of their outcomes (None when they did not all come).
    effective_rate: float | None = None
    lag_at_end: int = 0
    drained_seconds: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    #: Events sent without an outcome yet, once a second; and its peak in each half of the offered window: a
    #: loop that keeps up has a lag that stays level (its latency's worth), one that does not a growing one.
    lag_samples: list[int] = field(default_factory=list)
    lag_peak_first_half: int = 0
    lag_peak_second_half: int = 0


def start_stack(bootstrap: str, home: Path, replicas: int = 1, config: Path = REPO / "driftloop.yaml") -> Stack:
    """All six services as processes, ``replicas`` of each, on free ports."""
    settings = bench_settings(bootstrap, home, config)
    stack = Stack(
        settings,
        ports={child_name(service, r): free_port() for service in SERVICES for r in range(replicas)},
        env={"DRIFTLOOP_LOG_LEVEL": "WARNING"},
        replicas=dict.fromkeys(SERVICES, replicas),
    )
    stack.start()
    stack.wait_ready(180)
    return stack


async def first_champion(stack: Stack, warmup: int = 1500) -> None:
    """Labelled history, one manual retrain, and wait until deployment serves it."""
    settings = stack.settings
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i, (features, label) in enumerate(applications(warmup, seed=3)):
            key, value = event_bytes(i, features, "warm")
            await producer.send(settings.topic("events.raw"), value, key=key)
            label_event = orjson.dumps({"event_id": f"warm-{i}", "label": label})
            await producer.send(settings.topic("labels"), label_event, key=f"warm-{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    urls = {name: child.url for name, child in stack.children.items()}
    token = local_admin_token(settings)
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:
        await asyncio.sleep(5)
        response = await client.post(f"{urls['training']}/v1/models/{MODEL}/retrain", json={})
        response.raise_for_status()
        for _ in range(600):
            if (await client.get(f"{urls['deployment']}/v1/deployments/{MODEL}")).status_code == 200:
                return
            await asyncio.sleep(0.5)
    raise TimeoutError("no champion was deployed")


async def offered_load(stack: Stack, rate: float, seconds: float, drain: float = 60.0) -> LoopResult:
    """Events and their labels at ``rate`` per second for ``seconds``; outcomes are read as they come."""
    settings = stack.settings
    result = LoopResult(offered_rate=rate, seconds=seconds, replicas=max(stack.replicas.values(), default=1))
    tag = f"load{uuid.uuid4().hex[:6]}"
    sent_at: dict[str, float] = {}
    scored: set[str] = set()
    latencies: list[float] = []
    tps = await topic_partitions(settings.bootstrap, [settings.topic(OUTCOMES_TOPIC)])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)

    async def read_outcomes() -> None:
        while True:
            for messages in (await consumer.getmany(timeout_ms=100, max_records=5000)).values():
                for m in messages:
                    for outcome in outcome_dicts(m.value or b"{}"):
                        event = outcome["e"]
                        started = sent_at.get(event)
                        if started is None:
                            continue
                        if event in scored:
                            result.repeated += 1
                            continue
                        scored.add(event)
                        result.outcomes += 1
                        latencies.append(m.timestamp / 1000 - started)

    # The load goes out as batches per partition (the bus's own batching), a tick's worth at a time: a send per
    # record took a tenth of the two cores at 5,000 events/s, CPU the loop under test then lacked.
    bus = Bus(settings, "bench-load")
    await bus.start()
    reader = asyncio.create_task(read_outcomes())
    rows = list(applications(int(rate * seconds), seed=5))
    acknowledged: dict[asyncio.Future[object], None] = {}
    began = time.monotonic()
    steady: tuple[float, int] | None = None
    try:
        while result.events_sent < len(rows):
            if steady is None and time.monotonic() - began >= seconds / 4:
                steady = (time.monotonic(), result.outcomes)
            due = min(len(rows), int((time.monotonic() - began) * rate) + 1)
            if due < min(len(rows), result.events_sent + rate * 0.05):
                await asyncio.sleep(0.05)
                continue
            events: list[Outgoing] = []
            labels: list[Outgoing] = []
            now = time.time()
            for i in range(result.events_sent, due):
                features, label = rows[i]
                key, value = event_bytes(i, features, tag)
                event_id = f"{tag}-{i}"
                sent_at[event_id] = now
                events.append((key, value, [], None))
                labels.append((event_id.encode(), orjson.dumps({"event_id": event_id, "label": label}), [], None))
                if i % int(rate) == 0:
                    result.lag_samples.append(i - result.outcomes)
            acknowledged.update(dict.fromkeys(await bus.publish_batch("events.raw", events)))
            acknowledged.update(dict.fromkeys(await bus.publish_batch("labels", labels)))
            result.events_sent = due
        await asyncio.gather(*acknowledged)
        elapsed = time.monotonic() - began
        half = len(result.lag_samples) // 2
        result.lag_peak_first_half = max(result.lag_samples[:half], default=0)
        result.lag_peak_second_half = max(result.lag_samples[half:], default=0)
        result.sustained_rate = result.outcomes / elapsed
        if steady is not None:
            result.steady_rate = (result.outcomes - steady[1]) / (time.monotonic() - steady[0])
        result.lag_at_end = result.events_sent - result.outcomes
        drained = time.monotonic()
        while result.outcomes < result.events_sent and time.monotonic() - drained < drain:
            await asyncio.sleep(0.2)
        if result.outcomes >= result.events_sent:
            result.drained_seconds = time.monotonic() - drained
            result.effective_rate = result.events_sent / (elapsed + result.drained_seconds)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await bus.stop()
        await consumer.stop()
    if latencies:
        ordered = sorted(latencies)
        result.latency_p50_ms = statistics.median(ordered) * 1000
        result.latency_p99_ms = ordered[int(0.99 * (len(ordered) - 1))] * 1000
    return result
