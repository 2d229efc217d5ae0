"""Consuming: at-least-once delivery made safe by idempotent, dead-lettering handlers."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from pydantic import BaseModel, ValidationError

from driftloop.bus.faults import PoisonMessage, Verdict, backoff_delay, bisect, classify, poison_of
from driftloop.bus.metadata import topic_partitions
from driftloop.bus.producer import Bus, deadletter_for
from driftloop.bus.progress import ProgressWatch
from driftloop.contracts import FieldError, parse_internal
from driftloop.contracts.events import InternalEvent
from driftloop.limits import oversized_record, record_head
from driftloop.logging import get_logger
from driftloop.metrics import CONSUMER_LAG, HANDLER_SECONDS, MESSAGES_CONSUMED, POLL_RECORDS, RETRIES
from driftloop.settings import DriftloopSettings

log = get_logger(__name__)
M = TypeVar("M", bound=BaseModel)


class Record:
    """A consumed record with the topic name as the catalog knows it (prefix removed).

    Headers and the timestamp stay as the client read them until asked for:
    most handlers never look at them, and decoding every header of every
    record was a tenth of a stage's time.

    >>> record = Record("t", 0, 5, "k", b"{}", raw_headers=[("ce_id", b"e-1")], timestamp_ms=1_700_000_000_000)
    >>> record.event_id, record.headers, record.timestamp.year
    ('e-1', {'ce_id': 'e-1'}, 2023)
    """

    __slots__ = ("topic", "partition", "offset", "key", "value", "_headers", "_raw_headers", "_timestamp", "_ms")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: str | None,
        value: bytes,
        headers: dict[str, str] | None = None,
        timestamp: datetime | None = None,
        *,
        raw_headers: Sequence[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self._headers = headers
        self._raw_headers = raw_headers
        self._timestamp = timestamp
        self._ms = timestamp_ms

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {k: v.decode("utf-8", errors="replace") for k, v in self._raw_headers}
        return self._headers

    @property
    def timestamp(self) -> datetime | None:
        """The broker's timestamp of the record (its producer's create time, or the broker's append time)."""
        if self._timestamp is None and self._ms is not None:
            self._timestamp = record_time(self._ms)
        return self._timestamp

    def parse(self, model: type[M]) -> M:
        """Validate the value against its contract; a mismatch is poison, not a retry."""
        try:
            return model.model_validate_json(self.value)
        except ValidationError as exc:
            raise PoisonMessage.from_validation(exc) from exc

    def parse_internal(self) -> InternalEvent:
        """The service-emitted payload, whichever of a topic's contracts it is (chosen by ``event_type``)."""
        try:
            return parse_internal(self.value)
        except ValidationError as exc:
            raise PoisonMessage.from_validation(exc) from exc

    @property
    def event_id(self) -> str | None:
        if self._headers is not None:
            return self._headers.get("ce_id")
        for name, value in self._raw_headers:
            if name == "ce_id":
                return value.decode("utf-8", errors="replace")
        return None


Handler = Callable[[Record], Awaitable[None]]
#: Handles several records at once and returns the ones it could not use, each with its reason.
BatchHandler = Callable[[list[Record]], Awaitable[list[tuple[Record, PoisonMessage]]]]


class Deduper(Protocol):
    def seen(self, event_id: str) -> bool: ...

    def mark(self, event_id: str) -> None: ...


class MemoryDeduper:
    """Remembers the last ``capacity`` event ids; redeliveries after a rebalance fall inside it.

    >>> d = MemoryDeduper(capacity=2)
    >>> d.mark("a"); d.mark("b"); d.mark("c")
    >>> d.seen("a"), d.seen("c")
    (False, True)
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        return event_id in self._ids

    def mark(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


@dataclass
class _Batch:
    """One partition's share of a poll: the records for the handler with their dedupe keys, and the rest."""

    messages: list[ConsumerRecord[bytes, bytes]]
    records: list[tuple[Record, str | None]] = field(default_factory=list)
    oversized: list[tuple[Record, str]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    duplicates: int = 0


@dataclass(frozen=True)
class _Held:
    """A partition paused because a dependency was down: failures in a row, and when to try again."""

    attempt: int
    until: float


class StageState(Protocol):
    """Partitioned state a batch handler reads and writes, made durable with the batch (``driftloop.streams``)."""

    stage: str

    async def create_topics(self) -> None: ...

    def ready(self, partition: int) -> bool: ...

    def begin(self, partition: int) -> None: ...

    def attempt(self) -> AbstractContextManager[None]: ...

    def park(self) -> None: ...

    def flush(self, bus: Bus) -> int: ...

    def apply(self) -> None: ...

    def discard(self) -> None: ...

    def discard_all(self) -> None: ...

    async def recover(self, partitions: set[int]) -> None: ...

    async def revoke(self, partitions: set[int]) -> None: ...


class _Membership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the loop when it is in its group: an assignment, even an empty one, means the join finished.

    A revocation waits for the batch in hand, which then commits while its
    partitions are still this member's: without the wait, the next owner
    could start from the old commit, or rebuild a table before this batch's
    changes reached it.
    """

    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.loop.joined = False
        async with self.loop._working:
            # A partition assigned again starts unpaused at its last commit, which is where it was held.
            self.loop._held.clear()
            if self.loop.state is not None:
                await self.loop._stop_recovery()
                await self.loop.state.revoke({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.loop.progress.assigned(assigned, time.monotonic())
        self.loop._generation += 1
        if self.loop.state is not None and assigned:
            self.loop._begin_recovery(set(assigned))
        self.loop.joined = True


def as_record(msg: ConsumerRecord[bytes, bytes], prefix: str) -> Record:
    return Record(
        msg.topic.removeprefix(prefix),
        msg.partition,
        msg.offset,
        msg.key.decode("utf-8", errors="replace") if msg.key is not None else None,
        msg.value or b"",
        raw_headers=msg.headers,
        timestamp_ms=msg.timestamp,
    )


def record_time(timestamp_ms: int | None) -> datetime | None:
    """A Kafka record timestamp as a datetime; records of old message formats carry none (-1), and one no
    datetime can hold (past the year 9999: any producer may set the field) counts as none.

    >>> record_time(1_700_000_000_000).isoformat(), record_time(-1), record_time(2**62)
    ('2023-11-14T22:13:20+00:00', None, None)
    """
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


class ConsumerLoop:
    """Runs a handler over topics in a consumer group, committing only what is done."""

    def __init__(
        self,
        settings: DriftloopSettings,
        bus: Bus,
        *,
        service: str,
        topics: Iterable[str],
        group: str,
        handler: Handler | None = None,
        batch_handler: BatchHandler | None = None,
        deduper: Deduper | None = None,
        dedupe_key: Callable[[Record], str | None] | None = lambda record: record.event_id,
        attempts: int = 4,
        backoff_seconds: float = 0.2,
        state: StageState | None = None,
        batch_size: int | None = None,
        linger_seconds: float | None = None,
        stage: str | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.service = service
        self.topics = list(topics)
        self.group = settings.group(group)
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        if state is not None and (batch_handler is None or len(self.topics) != 1):
            raise ValueError("a stage with state reads one topic with a batch handler: its partitions are the state's")
        self.handler = handler
        self.batch_handler = batch_handler
        self.deduper = deduper or MemoryDeduper()
        self.dedupe_key = dedupe_key
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.assigned = asyncio.Event()
        #: In the group with a current assignment (possibly empty: more replicas than partitions).
        self.joined = False
        self.progress: ProgressWatch[TopicPartition] = ProgressWatch(settings.consumer_stall_seconds)
        self._polled_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._held: dict[TopicPartition, _Held] = {}
        self.state = state
        #: Names the loop in dead letters and retry metrics; ``service.topic`` by default.
        self.stage = stage
        self.batch_size = batch_size or settings.consumer_batch
        self.linger_seconds = settings.consumer_linger_ms / 1000 if linger_seconds is None else linger_seconds
        #: Held while a batch is handled and committed; a revocation waits for it.
        self._working = asyncio.Lock()
        #: Counts assignments, so records fetched before one are recognised and read again after it.
        self._generation = 0
        self._recovery: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.state is not None:
            await self.state.create_topics()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.settings.kafka_session_timeout_ms,
            rebalance_timeout_ms=self.settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=min(3000, self.settings.kafka_session_timeout_ms // 3),
            client_id=f"driftloop-{self.service}",
        )
        self._consumer.subscribe([self.settings.topic(t) for t in self.topics], listener=_Membership(self))
        # Joining a group can take seconds (longer after a restart); the service answers HTTP meanwhile.
        self._task = asyncio.create_task(self._run(), name=f"consume:{self.group}")

    async def stop(self) -> None:
        await self._stop_recovery()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    def _begin_recovery(self, assigned: set[TopicPartition]) -> None:
        """Pause newly assigned partitions until the state has read its changelogs for them."""
        assert self._consumer is not None and self.state is not None
        self._consumer.pause(*assigned)
        self._recovery = asyncio.create_task(self._recover(assigned), name=f"recover:{self.group}")

    async def _recover(self, assigned: set[TopicPartition]) -> None:
        assert self._consumer is not None and self.state is not None
        attempt = 0
        while True:
            try:
                await self.state.recover({tp.partition for tp in assigned})
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                delay = backoff_delay(
                    attempt, self.settings.retry_backoff_seconds, self.settings.retry_backoff_max_seconds
                )
                RETRIES.labels(self.service, f"{self.state.stage}.recovery", classify(exc).reason).inc()
                log.warning("table recovery failed; retrying", group=self.group, error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
        current = self._consumer.assignment()
        self._consumer.resume(*(tp for tp in assigned if tp in current and tp not in self._held))

    async def _stop_recovery(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
            self._recovery = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def health(self) -> bool | str:
        """Readiness of this consumer: True when it is in its group and keeping up, else why not.

        Polling stops only while a batch is being handled, so a loop that has
        not come back for the stall window is stuck in a handler.
        """
        if not self.running:
            return "not running"
        if not self.joined:
            return "joining its group"
        if self._recovery is not None and not self._recovery.done():
            return "rebuilding its tables"
        now = time.monotonic()
        if now - self._polled_at > self.progress.stall_seconds:
            return f"no poll for {now - self._polled_at:.0f}s"
        if stalled := self.progress.stalled(now):
            where = ", ".join(f"{tp.topic}[{tp.partition}] lag {lag}" for tp, lag in stalled.items())
            return f"no progress for {self.progress.stall_seconds:.0f}s: {where}"
        return True

    async def _observe(self, consumer: AIOKafkaConsumer) -> None:
        """Record the durable position and the end offset of every assigned partition that has been fetched,
        and the records waiting per topic (``driftloop_consumer_lag``; each replica its own partitions')."""
        now = time.monotonic()
        self._polled_at = now
        lags = dict.fromkeys(self.topics, 0)
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is not None:
                position = await consumer.position(tp)
                self.progress.observe(tp, position=position, end=end, now=now)
                topic = tp.topic.removeprefix(self.settings.topic_prefix)
                lags[topic] = lags.get(topic, 0) + max(0, end - position)
        for topic, lag in lags.items():
            CONSUMER_LAG.labels(self.service, topic).set(lag)

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        await consumer.start()
        while True:
            try:
                await self._poll(consumer)
                await self._observe(consumer)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Nothing of the failed batch was committed: go back and read it again.
                log.exception("consumer batch failed; re-reading from the last commit", group=self.group)
                await self._back_to_commit(consumer)

    async def _back_to_commit(self, consumer: AIOKafkaConsumer) -> None:
        """Rewind to the last commit, again and again while the broker or the group is still away (reading
        the commits fails then too): a loop that gave up here would leave its service up, consuming nothing."""
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self._rewind(consumer)
                # Back at the last commit, the position is durable again: a batch failing forever shows as stalled.
                await self._observe(consumer)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("rewind to the last commit failed; trying again", group=self.group, exc_info=True)
                delay = min(2 * delay, 10.0)

    @staticmethod
    async def _rewind(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Back to the last commit of every partition (or of ``partitions``), or to its start when the group
        never committed.

        aiokafka's ``seek_to_committed`` leaves a partition without a commit
        where it is, which would skip a failed first batch for good.
        """
        for tp in consumer.assignment() if partitions is None else partitions:
            committed = await consumer.committed(tp)
            if tp not in consumer.assignment():
                continue  # revoked while its commit was read: its next owner starts from that commit anyway
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        """Let partitions whose back-off has run out be fetched again, from the record that failed."""
        now = time.monotonic()
        assigned = consumer.assignment()
        for tp, held in self._held.items():
            if held.until <= now and tp in assigned and (self.state is None or self.state.ready(tp.partition)):
                consumer.resume(tp)

    def _poll_timeout_ms(self) -> int:
        """Poll no longer than the next resume is due, so a back-off is not stretched by an idle poll."""
        if not self._held:
            return 500
        wait = min(h.until for h in self._held.values()) - time.monotonic()
        return int(min(0.5, max(0.01, wait)) * 1000)

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        self._resume_due(consumer)
        generation = self._generation
        batches = await consumer.getmany(timeout_ms=self._poll_timeout_ms(), max_records=self.batch_size)
        if batches and self.linger_seconds:
            await self._linger(consumer, batches)
        if consumer.assignment():
            self.assigned.set()
        async with self._working:
            if generation != self._generation or not self.joined:
                # A rebalance began or ended while these were fetched: which generation each came from is not
                # known, so those of partitions still ours are read again from the commit.
                await self._rewind(consumer, [tp for tp in batches if tp in consumer.assignment()])
                return
            await self._take(consumer, batches)

    async def _linger(self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[Any]]) -> None:
        """Fetch more, up to ``batch_size`` records or ``linger_seconds``: for handlers whose cost is per batch."""
        total = sum(len(messages) for messages in batches.values())
        deadline = time.monotonic() + self.linger_seconds
        while total < self.batch_size and (left := deadline - time.monotonic()) > 0:
            more = await consumer.getmany(timeout_ms=max(1, int(left * 1000)), max_records=self.batch_size - total)
            for tp, messages in more.items():
                batches.setdefault(tp, []).extend(messages)
                total += len(messages)

    def _prepare(self, messages: list[ConsumerRecord[bytes, bytes]]) -> _Batch:
        """A partition's records as the handler sees them: repeats of handled event ids and oversized ones apart."""
        batch = _Batch(messages)
        for msg in messages:
            record = as_record(msg, self.settings.topic_prefix)
            if too_large := oversized_record(len(record.value), self.settings.max_record_bytes):
                batch.oversized.append((record, too_large))
                continue
            key = self.dedupe_key(record) if self.dedupe_key is not None else None
            if key and (key in batch.keys or self.deduper.seen(key)):
                batch.duplicates += 1
                continue
            batch.records.append((record, key))
            if key:
                batch.keys.add(key)
        if batch.duplicates:
            MESSAGES_CONSUMED.labels(
                self.service, messages[0].topic.removeprefix(self.settings.topic_prefix), "duplicate"
            ).inc(batch.duplicates)
        return batch

    async def _take(self, consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list[Any]]) -> None:
        """Handle what one poll fetched and commit what is done, all partitions together; hold a partition whose
        dependency is down.

        Every partition's handler runs inside one ``acknowledged`` block, so
        the poll's outputs share the producer's batches and one round trip;
        a stage's table changes follow in a second block; then one commit
        covers every partition that got through.
        """
        state = self.state
        batches: dict[TopicPartition, _Batch] = {}
        for tp, messages in fetched.items():
            if state is not None and not state.ready(tp.partition):
                # Fetched before the pause of a new assignment took hold: read again once the tables are whole.
                consumer.seek(tp, messages[0].offset)
                consumer.pause(tp)
                continue
            batches[tp] = self._prepare(messages)
        stage = self.stage or self.group.removeprefix(self.settings.topic_prefix)
        POLL_RECORDS.labels(self.service, stage).observe(sum(len(m) for m in fetched.values()))
        handled: dict[TopicPartition, _Batch] = {}
        commits: dict[TopicPartition, int] = {}
        try:
            async with self.bus.acknowledged():
                for tp, batch in batches.items():
                    if state is not None:
                        state.begin(tp.partition)
                    try:
                        stopped = await self._handle(batch)
                    except Exception as exc:
                        if state is not None:
                            state.discard()
                        verdict = classify(exc)
                        if verdict.kind != "retry":
                            raise
                        # The handler found a dependency down: nothing of this partition's batch is kept.
                        self._hold(consumer, tp, batch.messages[0].offset, verdict, exc)
                        continue
                    if state is not None:
                        state.park()
                    handled[tp] = batch
                    if stopped is None:
                        commits[tp] = batch.messages[-1].offset + 1
                    else:
                        index, error = stopped
                        failed = batch.records[index][0]
                        # The records before the failed one are done: commit them, and hold the partition at it.
                        commits[tp] = failed.offset
                        batch.keys = {key for _, key in batch.records[:index] if key}
                        self._hold(consumer, tp, failed.offset, classify(error), error)
            if state is not None:
                # Changes after the outputs: a change on the broker always has its outputs there too.
                async with self.bus.acknowledged():
                    state.flush(self.bus)
                state.apply()
        except Exception as exc:
            if state is not None:
                state.discard_all()
            verdict = classify(exc)
            if verdict.kind != "retry":
                raise
            # Some output of the poll did not reach the broker: every partition that had any goes back.
            for tp, batch in handled.items():
                self._hold(consumer, tp, batch.messages[0].offset, verdict, exc)
            return
        if commits:
            await consumer.commit(commits)
        for tp, batch in handled.items():
            if tp in commits and commits[tp] == batch.messages[-1].offset + 1:
                self._held.pop(tp, None)
            # Only now is the effect durable; a batch that failed above is re-read and not skipped as seen.
            self._forget(batch.keys)

    async def _handle(self, batch: _Batch) -> tuple[int, BaseException] | None:
        """Dead-letter the oversized records and run the handler on the others; where a per-record handler
        stopped at a dependency that is down, and why."""
        for record, reason in batch.oversized:
            await self._deadletter(record, reason, [])
            MESSAGES_CONSUMED.labels(self.service, record.topic, "deadletter").inc()
        if not batch.records:
            return None
        records = [record for record, _ in batch.records]
        if self.batch_handler:
            await self._handle_batch(records)
            return None
        return await self._handle_each(records)

    def _forget(self, keys: Iterable[str | None]) -> None:
        """Remember the keys of committed records, so their redeliveries are skipped."""
        for key in keys:
            if key:
                self.deduper.mark(key)

    def _hold(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, verdict: Verdict, exc: BaseException
    ) -> None:
        """Pause ``tp`` at ``offset`` for a back-off that doubles with each failure in a row, up to its cap.

        Nothing from ``offset`` on is committed, so a crash meanwhile loses
        nothing; the loop keeps polling, so the group does not evict it and
        the other partitions go on.
        """
        previous = self._held.get(tp)
        attempt = previous.attempt + 1 if previous else 1
        delay = backoff_delay(attempt, self.settings.retry_backoff_seconds, self.settings.retry_backoff_max_seconds)
        self._held[tp] = _Held(attempt, time.monotonic() + delay)
        consumer.seek(tp, offset)
        consumer.pause(tp)
        stage = self.stage or f"{self.service}.{tp.topic.removeprefix(self.settings.topic_prefix)}"
        RETRIES.labels(self.service, stage, verdict.reason).inc()
        log.warning(
            "dependency unavailable; partition paused",
            stage=stage,
            partition=tp.partition,
            offset=offset,
            reason=verdict.reason,
            attempt=attempt,
            retry_in=round(delay, 3),
            error=repr(exc),
        )

    async def _attempt_batch(self, records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
        """One run of the batch handler; if it raises, nothing it sent or wrote is kept."""
        assert self.batch_handler is not None
        with self.bus.attempt(), self.state.attempt() if self.state is not None else nullcontext():
            return await self.batch_handler(records)

    async def _handle_batch(self, records: list[Record]) -> None:
        assert self.batch_handler is not None
        started = time.perf_counter()
        rejected = await bisect(records, self._attempt_batch, self._retry_alone)
        for record, poison in rejected:
            await self._deadletter(record, poison.reason, poison.errors)
        HANDLER_SECONDS.labels(self.service, records[0].topic).observe(time.perf_counter() - started)
        MESSAGES_CONSUMED.labels(self.service, records[0].topic, "ok").inc(len(records) - len(rejected))
        MESSAGES_CONSUMED.labels(self.service, records[0].topic, "deadletter").inc(len(rejected))

    async def _retry_alone(self, record: Record, error: BaseException) -> PoisonMessage | None:
        """The last attempts of a record whose batch handler fails on it alone; why it is rejected, or None."""
        assert self.batch_handler is not None
        for attempt in range(2, self.attempts + 1):
            log.warning("handler failed, retrying", topic=record.topic, attempt=attempt - 1, error=repr(error))
            await asyncio.sleep(self.backoff_seconds * 2 ** (attempt - 2))
            try:
                rejected = await self._attempt_batch([record])
            except Exception as exc:
                if classify(exc).kind != "fault":
                    raise
                error = exc
                continue
            return rejected[0][1] if rejected else None
        log.error("handler gave up", topic=record.topic, offset=record.offset, error=repr(error))
        return PoisonMessage(f"handler failed {self.attempts} times: {error!r}")

    async def _handle_each(self, records: list[Record]) -> tuple[int, BaseException] | None:
        """Handle records in order; stop at the first whose dependency is down and say which, and why."""
        for index, record in enumerate(records):
            started = time.perf_counter()
            try:
                outcome = await self._attempt(record)
            except Exception as exc:
                if classify(exc).kind != "retry":
                    raise
                return index, exc
            HANDLER_SECONDS.labels(self.service, record.topic).observe(time.perf_counter() - started)
            MESSAGES_CONSUMED.labels(self.service, record.topic, outcome).inc()
        return None

    async def _attempt(self, record: Record) -> str:
        """Handle one record; return the outcome label, or raise what says a dependency is down.

        A bad record is dead-lettered at once; an unexplained failure gets
        ``attempts`` tries before the record is dead-lettered, so one record
        cannot stop the loop.
        """
        assert self.handler is not None
        for attempt in range(1, self.attempts + 1):
            try:
                await self.handler(record)
                return "ok"
            except Exception as exc:
                verdict = classify(exc)
                if verdict.kind == "retry":
                    raise
                if verdict.kind == "poison":
                    poison = poison_of(exc)
                    await self._deadletter(record, poison.reason, poison.errors)
                    return "deadletter"
                if attempt == self.attempts:
                    log.exception("handler gave up", topic=record.topic, offset=record.offset)
                    await self._deadletter(record, f"handler failed {attempt} times: {exc!r}", [])
                    return "deadletter"
                log.warning("handler failed, retrying", topic=record.topic, attempt=attempt, error=repr(exc))
                await asyncio.sleep(self.backoff_seconds * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _deadletter(self, record: Record, reason: str, errors: list[FieldError]) -> None:
        await self.bus.deadletter(
            deadletter_for(
                source_topic=record.topic,
                payload=(head := record_head(record.value, self.settings.max_record_bytes)),
                reason=reason,
                stage=self.stage or f"{self.service}.{record.topic}",
                key=record.key,
                partition=record.partition,
                offset=record.offset,
                errors=errors,
                original_event_id=record.event_id,
                headers=record.headers,
                truncated=len(head) < len(record.value),
            )
        )


def still_behind(ends: dict[TopicPartition, int], positions: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """The partitions whose position has not reached the end offset seen when reading began.

    Positions, not the offsets of records handed out: on a topic written in
    transactions the commit markers take offsets too, so the last record of a
    partition may sit below its end offset for good.

    >>> a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    >>> still_behind({a: 10, b: 5}, {a: 10, b: 3})
    {TopicPartition(topic='t', partition=1): 5}
    """
    return {tp: end for tp, end in ends.items() if positions.get(tp, 0) < end}


async def replay(
    settings: DriftloopSettings,
    topic: str,
    on_record: Callable[[Record, bool], Awaitable[None]],
    on_caught_up: Callable[[], Awaitable[None]],
    metadata_timeout: float = 30.0,
) -> None:
    """Read ``topic`` from its start forever; ``on_record(record, live)``, and one call when history is done.

    Used where every replica needs every record (deployment and training follow
    ``registry.events``): no group, so nothing to commit, and the state is
    rebuilt from the topic on each start. Only committed records are read, so an
    aborted transaction never counts as history.
    """
    tps = await topic_partitions(settings.bootstrap, [settings.topic(topic)], metadata_timeout)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        behind = still_behind(await consumer.end_offsets(tps), {})
        if not behind:
            await on_caught_up()
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                for msg in messages:
                    live = tp not in behind or msg.offset >= behind[tp]
                    record = as_record(msg, settings.topic_prefix)
                    if too_large := oversized_record(len(record.value), settings.max_record_bytes):
                        # Followers have no group to dead-letter for; the topic's group consumers do that.
                        log.warning("record skipped", topic=topic, offset=record.offset, reason=too_large)
                        continue
                    await on_record(record, live)
            if behind:
                behind = still_behind(behind, {tp: await consumer.position(tp) for tp in behind})
                if not behind:
                    await on_caught_up()
    finally:
        await consumer.stop()
