"""faust-streaming apps for the stateful services, embedded in the service's own process.

The faust app starts and stops inside the FastAPI lifespan, so a stream
service has one port, one /metrics and one lifecycle like every other service.
Agents read raw bytes and parse them with the shared contracts: faust's own
records never reach the wire.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import faust
from aiokafka.admin import NewTopic
from pydantic import BaseModel, ValidationError

from driftloop.bus import PoisonMessage, cloudevent_headers, deadletter_for
from driftloop.bus.faults import Verdict, backoff_delay, bisect, classify, poison_of
from driftloop.bus.progress import ProgressWatch
from driftloop.bus.topics import create_missing
from driftloop.contracts import TOPICS, Contract, DeadLetter, topic_for
from driftloop.limits import oversized_record, record_head
from driftloop.logging import get_logger
from driftloop.metrics import DEADLETTERS, MESSAGES_PRODUCED, RETRIES
from driftloop.settings import ServiceSettings

log = get_logger(__name__)
M = TypeVar("M", bound=BaseModel)


class StreamSettings(ServiceSettings):
    #: ``memory://`` rebuilds tables from their changelog topics at start; ``rocksdb://`` keeps them on disk.
    stream_store: str = "memory://"
    stream_replication_factor: int = 1


def stream_app(settings: StreamSettings, name: str) -> faust.App:
    # Replicas share the home folder; each keeps its RocksDB tables in a folder of its own.
    datadir = settings.home / "streams" / name / settings.instance_id.replace(":", "_")
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.group(name),
        broker=[f"kafka://{host}" for host in settings.bootstrap.split(",")],
        store=settings.stream_store,
        datadir=str(datadir),
        web_enabled=False,
        autodiscover=False,
        topic_partitions=3,
        topic_replication_factor=settings.stream_replication_factor,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_commit_every=100,
        broker_commit_interval=1.0,
    )


#: The internal topics each app reads, created before it subscribes (see ``started``).
_OWN_TOPICS: weakref.WeakKeyDictionary[faust.App, list[NewTopic]] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def started(app: faust.App, settings: StreamSettings) -> AsyncIterator[None]:
    """Run a faust app for the length of a service's lifespan.

    Its internal topics are created first: faust creates them itself at start,
    but on Apache Kafka a second replica starting at the same moment can
    subscribe before the topic is known, and faust then drops it from the
    subscription for good.
    """
    await create_missing(settings.bootstrap, _OWN_TOPICS.get(app, []))
    app.finalize()
    await app.start()
    try:
        yield
    finally:
        await app.stop()


class StreamHealth:
    """Readiness of a faust app: in its group, not rebalancing, and its agents keeping up.

    faust has no notion of a stalled partition, so the committed offset and
    the end offset of every assigned partition are sampled at each check (the
    supervisor checks every half second) and held to the rule of
    ``driftloop.bus.progress``: records waiting and no commit for the window
    means stalled. A partition this process has not committed yet is not
    judged; faust commits a partition's records as its agents take them.
    """

    def __init__(self, stall_seconds: float) -> None:
        self.watch: ProgressWatch[Any] = ProgressWatch(stall_seconds)
        self._generation = -1

    def __call__(self, app: faust.App | None) -> bool | str:
        if app is None or not app.started:
            return "not started"
        if app.rebalancing or app.rebalancing_count == 0:
            # Tables may still be recovering from their changelogs.
            return "joining its group"
        now = time.monotonic()
        if app.rebalancing_count != self._generation:
            self._generation = app.rebalancing_count
            self.watch.assigned(app.consumer.assignment(), now)
        # faust's own record of what it committed; it has no public accessor (faust-streaming 0.15).
        commits: Mapping[Any, int | None] = getattr(app.consumer, "_committed_offset", {})
        for tp in app.consumer.assignment():
            committed = commits.get(tp)
            if committed is not None:
                self.watch.observe(tp, position=committed, end=app.consumer.highwater(tp), now=now)
        if stalled := self.watch.stalled(now):
            where = ", ".join(f"{tp.topic}[{tp.partition}] lag {lag}" for tp, lag in stalled.items())
            return f"no progress for {self.watch.stall_seconds:.0f}s: {where}"
        return True


def _recovered(app: faust.App) -> bool:
    """In its group, not rebalancing, and every table rebuilt from its changelog."""
    # faust's TableManager has the recovery its interface type leaves out.
    recovery: Any = getattr(app.tables, "recovery")  # noqa: B009
    return bool(
        app.rebalancing_count and not app.rebalancing and not recovery.in_recovery and recovery.completed.is_set()
    )


async def recovered(app: faust.App, timeout: float) -> None:
    """Wait until the app has joined its group and rebuilt its tables, before feeding its topics.

    Records that reach a faust agent's topic while faust is still starting
    can be fetched, passed over and not fetched again until a restart; a
    producer in the same process waits for this first.
    """
    deadline = time.monotonic() + timeout
    while not _recovered(app):
        if time.monotonic() > deadline:
            raise TimeoutError(f"faust app {app.conf.id} did not finish recovering in {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def settled(app: faust.App, events: Sequence[faust.EventT[Any]]) -> list[faust.EventT[Any]]:
    """The batch's events that may touch tables now: after any recovery, on partitions still ours.

    faust can hand an agent events it fetched before a rebalance while the
    tables are still being rebuilt from their changelogs (faust-streaming
    issues 216 and 221). A batch that read a key then would find nothing and
    write an entry the recovery later overwrites with the older value, and the
    event would be committed all the same: lost. So a stateful batch first
    waits for the tables to be whole. Events fetched before the last
    rebalance, or of partitions that went to another replica, are dropped,
    and ``batches`` leaves them unacknowledged: the partition's owner reads
    them again from its committed offset.
    """
    while not _recovered(app):
        await asyncio.sleep(0.05)
    return _current(app, events)


def _current(app: faust.App, events: Sequence[faust.EventT[Any]]) -> list[faust.EventT[Any]]:
    """The events fetched in this consumer generation, of partitions still assigned here."""
    assigned, generation = app.consumer.assignment(), app.consumer_generation_id
    return [e for e in events if e.message.tp in assigned and e.message.generation_id == generation]


async def batches(
    app: faust.App, stream: faust.StreamT[Any], size: int, within: float
) -> AsyncIterator[Sequence[faust.EventT[Any]]]:
    """A stream's events in batches, each acknowledged only once the agent has finished with it.

    faust's ``take_events`` acknowledges a batch when it is asked for the
    next one, and also when faust stops the stream, which it does without
    waiting for the agent: a batch still in its handler at a stop (one waiting
    out an outage, say) would be committed without its effects. So each batch
    is held, marked acknowledged where faust looks, and really acknowledged
    here when the agent asks for the next one; a batch whose handler raised is
    never acknowledged. Events fetched before the last rebalance stay
    unacknowledged too (``settled``): their partition's owner reads them again.
    """
    taken = cast("faust.Stream[Any]", stream).take_events(size, within=within)
    async for events in taken:
        for event in events:
            event.message.acked = True
        yield events
        for event in _current(app, events):
            event.message.acked = False
            event.ack()


async def durable(app: faust.App) -> None:
    """Wait until the broker has every record this app has produced, table changelogs included.

    Table writes go through faust's producer buffer, whose flush before a
    commit gives up after 0.1 s without progress (faust-streaming 0.15): on a
    busy loop an offset could be committed before the table change it caused
    reached the broker, and a stop or a crash would then lose the change. A
    batch handler waits for this before its events are acknowledged.
    """
    producer = app.producer
    while producer.buffer.size:
        await producer.buffer.flush()
    await producer.flush()


#: Stream state is co-partitioned with the data topics it is keyed like.
PARTITIONS = TOPICS["events.validated"].partitions


def raw_topic(app: faust.App, settings: StreamSettings, name: str, *, internal: bool = False) -> faust.TopicT:
    """A topic as faust sees it: bytes in, bytes out. ``internal`` ones are the service's own, created at start."""
    extra: dict[str, Any] = {"internal": True, "partitions": PARTITIONS} if internal else {}
    if internal:
        own = NewTopic(settings.topic(name), PARTITIONS, settings.stream_replication_factor)
        _OWN_TOPICS.setdefault(app, []).append(own)
    return app.topic(
        settings.topic(name), key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw", **extra
    )


def state_table(app: faust.App, name: str, *, batched: bool = False) -> faust.types.TableT[Any, Any]:
    """A changelog-backed table of JSON values keyed by string; missing keys read as None via ``get``.

    ``batched`` tables are written after a batch (``take_events``), outside one
    event's iteration, so the changelog partition comes from the key through
    the default partitioner: the same partition the key's records are on, as
    long as the source topic is keyed by the same string with that partitioner.
    """
    return app.Table(name, default=None, partitions=PARTITIONS, key_type=str, value_type=None, use_partitioner=batched)


def parse(model: type[M], value: bytes) -> M:
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        raise PoisonMessage.from_validation(exc) from exc


class Emitter:
    """Sends contracts from inside agents, with CloudEvents headers like the bus."""

    def __init__(self, app: faust.App, settings: StreamSettings) -> None:
        self.app = app
        self.settings = settings
        self._topics: dict[str, faust.TopicT] = {}

    def topic(self, name: str) -> faust.TopicT:
        if name not in self._topics:
            self._topics[name] = raw_topic(self.app, self.settings, name)
        return self._topics[name]

    async def emit_all(self, events: Sequence[tuple[Contract, str | None]]) -> None:
        """Send a batch's records straight to the producer and wait until the broker has them all.

        faust's own ``Topic.send`` wraps every record in futures and buffers
        that cost more than the record; a stateful batch that writes its
        tables only after this returns loses nothing if it dies half-way.
        """
        producer = self.app.producer
        pending = []
        for event, key in events:
            name = topic_for(type(event))
            headers = cloudevent_headers(event, f"driftloop/{self.settings.service}", key)
            value, raw_key = event.model_dump_json().encode(), key.encode() if key is not None else None
            pending.append(await producer.send(self.settings.topic(name), raw_key, value, None, None, headers))
            MESSAGES_PRODUCED.labels(self.settings.service, name).inc()
        await asyncio.gather(*pending)

    async def send_all(self, topic: faust.TopicT, records: Sequence[tuple[bytes, bytes]]) -> None:
        """``emit_all`` for internal records (key, value) without contract or headers."""
        producer = self.app.producer
        name = topic.get_topic_name()
        await asyncio.gather(*[await producer.send(name, key, value, None, None, None) for key, value in records])

    async def emit(self, event: Contract, key: str | None) -> None:
        name = topic_for(type(event))
        headers = cloudevent_headers(event, f"driftloop/{self.settings.service}", key)
        # Not awaiting the delivery here is safe: a batch handler waits for ``durable`` before its events are acked.
        await self.topic(name).send(
            key=key.encode() if key is not None else None,
            value=event.model_dump_json().encode(),
            headers=headers,
        )
        MESSAGES_PRODUCED.labels(self.settings.service, name).inc()

    async def guard(
        self, event: faust.EventT[Any], stage: str, handle: Callable[[faust.EventT[Any]], Awaitable[None]]
    ) -> None:
        """Run one event's handler so that no record can crash the agent, and no outage can lose one.

        A crashed faust agent acknowledges the record it choked on, which
        would lose it silently. Here an unavailable dependency is waited out
        (the event stays unacknowledged meanwhile) and a bad record goes to the
        dead-letter topic, as in ``driftloop.bus.faults``. A record over
        ``max_record_bytes`` goes there before the handler sees it.
        """
        try:
            self.check_size(event)
        except PoisonMessage as exc:
            await self.deadletter(event, exc, stage)
            return

        async def handle_one(events: Sequence[faust.EventT[Any]]) -> None:
            await handle(events[0])

        await self.guard_batch([event], stage, handle_one)

    async def guard_batch(
        self,
        events: Sequence[faust.EventT[Any]],
        stage: str,
        handle: Callable[[Sequence[faust.EventT[Any]]], Awaitable[None]],
    ) -> None:
        """Run a batch handler until it succeeds: retry while a dependency is down, split it to find bad records.

        The handler dead-letters the records it can tell are bad (``parse_each``);
        one that makes it fail is found by bisecting the batch and dead-lettered
        with the error. While the broker, database or object store is
        unavailable the agent waits with capped exponential back-off and tries
        the whole batch again, for as long as it takes: its events are not
        acknowledged, so faust commits none of them. ``handle`` must be safe to
        run again on events it has partly handled. It returns once everything
        the batch produced, table changes included, is on the broker
        (``durable``), so the batch may be acknowledged (``batches``).
        """

        async def run(batch: list[faust.EventT[Any]]) -> list[tuple[faust.EventT[Any], PoisonMessage]]:
            await handle(batch)
            return []

        async def give_up(event: faust.EventT[Any], error: BaseException) -> PoisonMessage:
            log.error("stream handler failed on one record", stage=stage, error=repr(error))
            return poison_of(error)

        attempt = 0
        while True:
            try:
                rejected = await bisect(list(events), run, give_up)
            except Exception as exc:
                attempt += 1
                await self._wait_out(stage, classify(exc), exc, attempt)
                continue
            for event, poison in rejected:
                await self.deadletter(event, poison, stage)
            await durable(self.app)
            return

    async def guard_parsed(
        self,
        events: Sequence[faust.EventT[Any]],
        model: type[M],
        stage: str,
        handle: Callable[[Sequence[tuple[faust.EventT[Any], M]]], Awaitable[None]],
    ) -> None:
        """Dead-letter the events that do not parse as ``model`` (once), and ``guard_batch`` the rest with payloads."""
        pairs = await self.parse_pairs(events, model, stage)
        payloads = {id(event): payload for event, payload in pairs}

        async def run(batch: Sequence[faust.EventT[Any]]) -> None:
            await handle([(event, payloads[id(event)]) for event in batch])

        if pairs:
            await self.guard_batch([event for event, _ in pairs], stage, run)

    async def _wait_out(self, stage: str, verdict: Verdict, exc: BaseException, attempt: int) -> None:
        delay = backoff_delay(attempt, self.settings.retry_backoff_seconds, self.settings.retry_backoff_max_seconds)
        RETRIES.labels(self.settings.service, stage, verdict.reason).inc()
        log.warning(
            "dependency unavailable; retrying the batch",
            stage=stage,
            reason=verdict.reason,
            attempt=attempt,
            retry_in=round(delay, 3),
            error=repr(exc),
        )
        await asyncio.sleep(delay)

    async def parse_each(self, events: Sequence[faust.EventT[Any]], model: type[M], stage: str) -> list[M]:
        """The events' payloads as ``model``, in order; the ones that do not fit are dead-lettered."""
        return [parsed for _, parsed in await self.parse_pairs(events, model, stage)]

    async def parse_pairs(
        self, events: Sequence[faust.EventT[Any]], model: type[M], stage: str
    ) -> list[tuple[faust.EventT[Any], M]]:
        """Each event that fits ``model`` with its payload, in order; the others are dead-lettered."""
        parsed: list[tuple[faust.EventT[Any], M]] = []
        for event in events:
            try:
                self.check_size(event)
                parsed.append((event, parse(model, event.value)))
            except PoisonMessage as exc:
                await self.deadletter(event, exc, stage)
        return parsed

    def check_size(self, event: faust.EventT[Any]) -> None:
        if too_large := oversized_record(len(event.message.value or b""), self.settings.max_record_bytes):
            raise PoisonMessage(too_large)

    async def deadletter(self, event: faust.EventT[Any], exc: PoisonMessage, stage: str) -> None:
        message = event.message
        value = message.value or b""
        raw = message.headers.items() if isinstance(message.headers, Mapping) else message.headers or ()
        headers = {k: bytes(v).decode("utf-8", "replace") for k, v in raw}
        record: DeadLetter = deadletter_for(
            source_topic=message.topic.removeprefix(self.settings.topic_prefix),
            payload=(head := record_head(value, self.settings.max_record_bytes)),
            reason=exc.reason,
            stage=stage,
            key=message.key.decode("utf-8", "replace") if message.key else None,
            partition=message.partition,
            offset=message.offset,
            errors=exc.errors,
            original_event_id=headers.get("ce_id"),
            headers=headers,
            truncated=len(head) < len(value),
        )
        await self.emit(record, record.key)
        DEADLETTERS.labels(self.settings.service, stage).inc()
