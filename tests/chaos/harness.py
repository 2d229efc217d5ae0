"""What the chaos tests share: a stack supervised as ``driftloop up`` supervises it, on a broker whose log
outlives its process; a producer of events and labels at a steady rate; counts by event id.

The broker is Tansu keeping its log in S3 (moto's server, in a process of its own) or Apache Kafka keeping it
on disk, as ``DRIFTLOOP_TEST_BROKER`` says: a broker restarted with its log in memory would lose every topic,
and nothing the services do could be checked across it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from driftloop.broker import KAFKA_VERSION, EmbeddedBroker, LocalKafka, free_port
from driftloop.bus.metadata import topic_partitions
from driftloop.cli.governance import local_admin_token
from driftloop.cli.stack import SERVICES, Stack
from driftloop.services.monitoring.join import outcome_dicts
from driftloop.services.monitoring.routing import OUTCOMES_TOPIC
from driftloop.settings import DriftloopSettings
from tests.bench.bench_loop import applications, event_bytes
from tests.fixtures.s3 import S3Process

REPO = Path(__file__).resolve().parents[2]
MODEL = "loan-approval"
#: Every producer event's entity is one of these (``bench_loop.event_bytes``).
ENTITIES = 1000


class DurableBroker:
    """A broker that can be killed and started again on the same port with everything it acknowledged."""

    def __init__(self, kind: str, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.storage: S3Process | None = None
        self.process: EmbeddedBroker | LocalKafka
        if kind == "kafka":
            version = os.environ.get("DRIFTLOOP_TEST_KAFKA_VERSION", KAFKA_VERSION)
            self.process = LocalKafka(free_port(), folder / "data", version=version, log_path=folder / "broker.log")
            return
        self.storage = S3Process(folder / "s3.log")
        endpoint = self.storage.endpoint
        self.process = EmbeddedBroker(
            free_port(),
            log_path=folder / "broker.log",
            storage="s3://tansu/",
            storage_env={
                "AWS_ENDPOINT": f"http://{endpoint.endpoint}",
                "AWS_ACCESS_KEY_ID": endpoint.access_key,
                "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true",
            },
        )

    @property
    def bootstrap(self) -> str:
        return self.process.bootstrap

    def start(self) -> None:
        if self.storage is not None:
            self.storage.start()
            self.storage.bucket("tansu")
        self.process.start()

    def restart(self) -> float:
        """Kill the broker (SIGKILL) and start it again; the seconds it was away."""
        began = time.monotonic()
        self.process.kill()
        self.process.start()
        return time.monotonic() - began

    def stop(self) -> None:
        self.process.stop()
        if self.storage is not None:
            self.storage.stop()


class Supervisor:
    """What ``driftloop up`` does on every refresh, in a thread: restart what exited, follow readiness."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.states: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.stack.supervise()
            self.states = self.stack.poll()
            self._stop.wait(0.5)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def kill(self, name: str) -> int:
        """SIGKILL the child; the restart count it will have once the supervisor has brought it back."""
        child = self.stack.children[name]
        assert child.process is not None
        restarts = child.restarts + 1
        os.kill(child.process.pid, signal.SIGKILL)
        return restarts

    async def back(self, name: str, restarts: int, timeout: float = 300.0) -> float:
        """Wait until the supervisor has restarted ``name`` and it is ready again; the seconds that took."""
        began = time.monotonic()
        child = self.stack.children[name]
        while child.restarts < restarts or self.states.get(name) != "ready":
            if time.monotonic() - began > timeout:
                raise AssertionError(f"{name} not back after {timeout:.0f}s: {self.states}; see {self.stack.log_dir}")
            await asyncio.sleep(0.25)
        return time.monotonic() - began

    async def all_ready(self, timeout: float = 300.0) -> float:
        """Wait until every child is ready, after a refresh of their states; the seconds that took."""
        began = time.monotonic()
        await asyncio.sleep(1.0)
        while any(state != "ready" for state in self.states.values()):
            if time.monotonic() - began > timeout:
                why = await self._why_not_ready()
                raise AssertionError(f"not all ready after {timeout:.0f}s: {why}; see {self.stack.log_dir}")
            await asyncio.sleep(0.25)
        return time.monotonic() - began

    async def _why_not_ready(self) -> dict[str, str]:
        """Each child that is not ready, with what its readiness endpoint says (which consumer, and why)."""
        why = {}
        async with httpx.AsyncClient(timeout=5.0) as client:
            for name, state in self.states.items():
                if state != "ready":
                    try:
                        why[name] = f"{state}: {(await client.get(f'{self.stack.children[name].url}/readyz')).text}"
                    except httpx.HTTPError as exc:
                        why[name] = f"{state}: {exc!r}"
        return why


def chaos_stack(
    broker: DurableBroker, home: Path, *, database_url: str = "", artifact_uri: str = "", **env: str
) -> Stack:
    """The six services as ``driftloop up`` runs them, on ``broker``, with back-offs short enough for a test."""
    settings = DriftloopSettings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"chaos{uuid.uuid4().hex[:8]}.",
        home=home,
        config=REPO / "driftloop.yaml",
        database_url=database_url,
        artifact_uri=artifact_uri,
    )
    return Stack(
        settings,
        ports={name: free_port() for name in SERVICES},
        env={
            "DRIFTLOOP_LOG_FORMAT": "json",
            # A dependency that is back is tried again within two seconds, not after the default 30 s cap.
            "DRIFTLOOP_RETRY_BACKOFF_MAX_SECONDS": "2",
            # A member killed with SIGKILL holds its partitions until its session times out.
            "DRIFTLOOP_KAFKA_SESSION_TIMEOUT_MS": "6000",
            **env,
        },
    )


@asynccontextmanager
async def supervised(stack: Stack) -> AsyncIterator[Supervisor]:
    """The stack started, ready and supervised; stopped at the end whatever happened."""
    supervisor = Supervisor(stack)
    try:
        await asyncio.to_thread(stack.start)
        await asyncio.to_thread(stack.wait_ready, 240.0)
        supervisor.start()
        yield supervisor
    finally:
        supervisor.stop()
        await asyncio.to_thread(stack.stop)


@dataclass
class Producer:
    """Events on ``events.raw`` and their labels on ``labels`` at ``rate`` per second, until told to stop.

    A send the broker did not acknowledge is sent again, so every event counts as sent exactly when the broker
    has it and its label. Event ``i`` is due ``i / rate`` seconds after the start: what falls behind (while the
    broker is away, or the producer is short of CPU) is sent as soon as it can be, so the rate holds over the
    whole window.
    """

    settings: DriftloopSettings
    rate: float
    tag: str = field(default_factory=lambda: f"load{uuid.uuid4().hex[:6]}")
    #: Indexes of the events the broker acknowledged with their labels.
    acked: set[int] = field(default_factory=set)
    #: Records sent again after the broker refused or lost them.
    resent: int = 0
    #: Events per second from the first send to the last.
    achieved: float = 0.0
    _unacked: dict[int, dict[str, tuple[bytes, bytes]]] = field(default_factory=dict)
    _failed: list[tuple[int, str]] = field(default_factory=list)

    def event_id(self, index: int) -> str:
        return f"{self.tag}-{index}"

    @property
    def event_ids(self) -> set[str]:
        return {self.event_id(index) for index in self.acked}

    async def run(self, stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap, linger_ms=20, max_batch_size=256 * 1024, acks="all"
        )
        await producer.start()
        rows = iter(applications(10**9, seed=5))
        settling: set[asyncio.Task[None]] = set()
        sent, began = 0, time.monotonic()
        try:
            while not stop.is_set():
                due = int((time.monotonic() - began) * self.rate)
                tick: list[tuple[int, str, asyncio.Future[Any]]] = []
                while sent < due:
                    features, label = next(rows)
                    key, value = event_bytes(sent, features, self.tag)
                    label_value = orjson.dumps({"event_id": self.event_id(sent), "label": label})
                    self._unacked[sent] = {
                        "events.raw": (key, value),
                        "labels": (self.event_id(sent).encode(), label_value),
                    }
                    tick += await self._send(producer, sent, ["events.raw", "labels"])
                    sent += 1
                failed, self._failed = self._failed, []
                for index, topic in failed:
                    self.resent += 1
                    tick += await self._send(producer, index, [topic])
                if tick:
                    task = asyncio.create_task(self._settle(tick))
                    settling.add(task)
                    task.add_done_callback(settling.discard)
                await asyncio.sleep(0.01)
            self.achieved = sent / (time.monotonic() - began)
            deadline = time.monotonic() + 180
            while self._unacked and time.monotonic() < deadline:
                await asyncio.gather(*settling)
                failed, self._failed = self._failed, []
                tick = []
                for index, topic in failed:
                    self.resent += 1
                    tick += await self._send(producer, index, [topic])
                await self._settle(tick)
            assert not self._unacked, f"{len(self._unacked)} events never acknowledged"
        finally:
            await producer.stop()

    async def _send(
        self, producer: AIOKafkaProducer, index: int, topics: Iterable[str]
    ) -> list[tuple[int, str, asyncio.Future[Any]]]:
        sent = []
        for topic in topics:
            key, value = self._unacked[index][topic]
            try:
                future = await producer.send(self.settings.topic(topic), value, key=key)
            except Exception:
                self._failed.append((index, topic))
                continue
            sent.append((index, topic, future))
        return sent

    async def _settle(self, tick: list[tuple[int, str, asyncio.Future[Any]]]) -> None:
        outcomes = await asyncio.gather(*(future for _, _, future in tick), return_exceptions=True)
        for (index, topic, _), outcome in zip(tick, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._failed.append((index, topic))
                continue
            parts = self._unacked.get(index)
            if parts is not None:
                parts.pop(topic, None)
                if not parts:
                    del self._unacked[index]
                    self.acked.add(index)


async def read_all(settings: DriftloopSettings, topic: str, timeout: float = 300.0) -> list[Any]:
    """Every record of ``topic``, from its start to the end it has when reading begins.

    The end is where both the listed end offset and the fetches' high watermark are reached: Tansu 0.6 lists a
    partition's end as its last batch's first offset + 1.
    """
    tps = await topic_partitions(settings.bootstrap, [settings.topic(topic)])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left: set[TopicPartition] = {tp for tp, end in ends.items() if end > 0}
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while left:
            assert time.monotonic() < deadline, f"{topic} not read to its end within {timeout:.0f}s"
            for messages in (await consumer.getmany(*left, timeout_ms=500, max_records=20_000)).values():
                records += messages
            for tp in list(left):
                position, highwater = await consumer.position(tp), consumer.highwater(tp)
                if position >= ends[tp] and highwater is not None and position >= highwater:
                    left.discard(tp)
        return records
    finally:
        await consumer.stop()


def by_event(records: list[Any], event_id: Callable[[dict[str, Any]], str]) -> Counter[str]:
    """How often each event id occurs on a topic."""
    return Counter(event_id(orjson.loads(record.value)) for record in records)


@dataclass(frozen=True)
class Tally:
    """One topic's records of the producer's events: how many distinct, how many records, which are missing."""

    distinct: int
    records: int
    missing: int
    extra: int

    @classmethod
    def of(cls, counts: Counter[str], expected: set[str]) -> Tally:
        ours = {event: n for event, n in counts.items() if event in expected}
        return cls(len(ours), sum(ours.values()), len(expected - ours.keys()), len(set(counts) - expected))

    @property
    def repeats(self) -> int:
        return self.records - self.distinct


class Outcomes:
    """Monitoring's outcomes as they come: each scored (event, version) with the join records that scored it.

    An outcome repeated after a crash of the join carries the same source (join partition, offset, index),
    which the tracker recognises and drops; two sources for one (event, version) would be a prediction scored
    twice.
    """

    def __init__(self, settings: DriftloopSettings) -> None:
        self.settings = settings
        self.sources: dict[tuple[str, int], set[tuple[int, int, int]]] = {}
        self.records = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self) -> None:
        tps = await topic_partitions(self.settings.bootstrap, [self.settings.topic(OUTCOMES_TOPIC)])
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                for messages in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                    for message in messages:
                        # Champion moves and re-arms ride the same topic and carry no outcome.
                        for outcome in outcome_dicts(message.value):
                            self.records += 1
                            key = (outcome["e"], outcome["v"])
                            self.sources.setdefault(key, set()).add((outcome["p"], outcome["o"], outcome["i"]))
        finally:
            await consumer.stop()

    def scored(self) -> set[str]:
        return {event for event, _ in self.sources}

    async def until_scored(self, events: set[str], timeout: float) -> float:
        """Wait until every one of ``events`` has an outcome; the seconds it took."""
        began = time.monotonic()
        while missing := events - self.scored():
            if time.monotonic() - began > timeout:
                raise AssertionError(f"{len(missing)} of {len(events)} events not scored after {timeout:.0f}s")
            await asyncio.sleep(1.0)
        return time.monotonic() - began

    def per_version(self) -> dict[int, int]:
        return dict(Counter(version for _, version in self.sources))

    def scored_twice(self) -> list[tuple[str, int]]:
        return [key for key, found in self.sources.items() if len(found) > 1]


async def observed(stack: Stack, expected: dict[int, int], timeout: float = 120.0) -> dict[int, int]:
    """Monitoring's count of scored outcomes per version, once it equals ``expected`` or stops changing."""
    url = f"{stack.children['monitoring'].url}/v1/models/{MODEL}/metrics"
    seen: dict[int, int] = {}
    still, deadline = 0, time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(url)
            except httpx.HTTPError:
                await asyncio.sleep(1.0)
                continue
            if response.status_code == 200:
                now = {v["model_version"]: v["observations"] for v in response.json()["versions"]}
                if now == expected:
                    return now
                still = still + 1 if now == seen else 0
                if still >= 10:
                    return now
                seen = now
            await asyncio.sleep(1.0)
    return seen


async def entity_counts(stack: Stack) -> dict[str, int]:
    """Each entity's event count as features' state holds it (its ``entity_count`` aggregate)."""
    url = stack.children["features"].url
    counts: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for n in range(ENTITIES):
            entity = f"applicant-{n}"
            response = await client.get(f"{url}/v1/features/{entity}")
            if response.status_code == 200:
                counts[entity] = int(response.json()["applications"]["features"]["entity_count"])
    return counts


def expected_entity_counts(*batches: int) -> dict[str, int]:
    """Per entity, the events of batches of these sizes made with ``event_bytes`` (entity ``i % 1000``)."""
    counts: Counter[str] = Counter()
    for count in batches:
        for i in range(count):
            counts[f"applicant-{i % ENTITIES}"] += 1
    return dict(counts)


def note(what: str, seconds: float | None = None) -> float:
    """Say how far a test has come, as it goes: a chaos test runs for minutes. Returns ``seconds``."""
    took = "" if seconds is None else f" after {seconds:.1f}s"
    print(f"{time.strftime('%H:%M:%S')} {what}{took}", flush=True)
    return seconds or 0.0


def admin_headers(settings: DriftloopSettings) -> dict[str, str]:
    return {"Authorization": f"Bearer {local_admin_token(settings)}"}
