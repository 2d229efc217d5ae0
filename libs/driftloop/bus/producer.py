"""Publishing: the payload is plain JSON, the envelope travels as CloudEvents headers."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import cache, partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber
from aiokafka.producer.message_accumulator import BatchBuilder
from pydantic_core import to_json

from driftloop.bus.partitioner import partitions_for
from driftloop.contracts import Contract, DeadLetter, Envelope, FieldError, topic_for, utcnow
from driftloop.logging import get_logger
from driftloop.metrics import DEADLETTERS, MESSAGES_PRODUCED
from driftloop.settings import DriftloopSettings

log = get_logger(__name__)

Headers = list[tuple[str, bytes]]


def cloudevent_headers(event: Contract, source: str, subject: str | None) -> Headers:
    """Binary-mode CloudEvents attributes, so any CloudEvents tool can route the record.

    Every record sent carries them, so the parts a type and a source always
    share are encoded once.

    >>> from driftloop.contracts import LabelEvent
    >>> [name for name, _ in cloudevent_headers(LabelEvent(event_id="e-1", label=1), "driftloop/test", "e-1")]
    ['ce_specversion', 'ce_id', 'ce_source', 'ce_type', 'ce_time', 'ce_subject', 'content-type']
    """
    constant = _constant_headers(type(event).EVENT_TYPE, source)
    if isinstance(event, Envelope):
        return _headers(
            constant,
            event.event_id,
            event.occurred_at.isoformat().encode(),
            subject,
            (event.correlation_id, event.causation_id),
        )
    return _headers(constant, str(getattr(event, "event_id", "")), utcnow().isoformat().encode(), subject, None)


def _headers(
    constant: tuple[tuple[str, bytes], ...],
    event_id: str,
    time: bytes,
    subject: str | None,
    lineage: tuple[str, str | None] | None,
) -> Headers:
    """The headers of one record: the constant ones of its type and source, and its own; ``lineage`` is an
    envelope's correlation and causation ids."""
    specversion, source_header, type_header, content_type = constant
    headers = [specversion, ("ce_id", event_id.encode()), source_header, type_header, ("ce_time", time)]
    if subject is not None:
        headers.append(("ce_subject", subject.encode()))
    headers.append(content_type)
    if lineage is not None:
        correlation_id, causation_id = lineage
        headers.append(("correlation_id", correlation_id.encode()))
        if causation_id is not None:
            headers.append(("causation_id", causation_id.encode()))
    return headers


@cache
def _constant_headers(event_type: str, source: str) -> tuple[tuple[str, bytes], ...]:
    return (
        ("ce_specversion", b"1.0"),
        ("ce_source", source.encode()),
        ("ce_type", event_type.encode()),
        ("content-type", b"application/json"),
    )


def deadletter_for(
    *,
    source_topic: str,
    payload: bytes,
    reason: str,
    stage: str,
    key: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    errors: list[FieldError] | None = None,
    original_event_id: str | None = None,
    headers: dict[str, str] | None = None,
    truncated: bool = False,
) -> DeadLetter:
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=key,
        payload=payload.decode("utf-8", errors="backslashreplace"),
        payload_truncated=truncated,
        headers=headers or {},
        reason=reason,
        errors=errors or [],
        stage=stage,
        original_event_id=original_event_id,
    )


#: A record handed to ``Bus.acknowledged``'s batching: key, value (None: a tombstone), headers and partition
#: (None: from the key).
Outgoing = tuple[bytes | None, bytes | None, Headers, int | None]


class _Pending:
    """What one ``acknowledged`` block sends: records waiting to leave as batches, and futures to await."""

    def __init__(self) -> None:
        self.records: dict[str, list[Outgoing]] = {}
        self.futures: list[asyncio.Future[object]] = []


#: What the broker answers an idempotent producer whose sequence numbers it no longer follows. aiokafka 0.14
#: leaves a producer so when a batch expires while its partition has no leader, as when Apache Kafka restarts
#: after an outage longer than the request timeout: the batch took its numbers without reaching the broker,
#: which then refuses every later batch to that partition. Only a new producer id starts the numbers again.
_LOST_SEQUENCE = OutOfOrderSequenceNumber

#: The sends of the current caller; set by ``Bus.acknowledged`` for one block.
_pending: ContextVar[_Pending | None] = ContextVar("driftloop_pending_sends", default=None)


class _QuietInitProducerId(logging.Filter):
    """aiokafka logs a refused InitProducerId at error level; during the idempotence probe it is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "InitProducerIdRequest" not in record.getMessage()


class Bus:
    """One producer per process; ``publish`` returns once the broker has the record.

    Idempotence (no duplicates or reordering from the producer's own retries)
    is switched on when the broker grants a producer id, which Apache Kafka does
    and Tansu 0.6 with in-memory storage does not: probed at start, not assumed.
    """

    def __init__(self, settings: DriftloopSettings, service: str) -> None:
        self.settings = settings
        self.service = service
        self.idempotent = False
        self._producer: AIOKafkaProducer | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._spread = itertools.count()

    def _new_producer(self, idempotent: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            acks="all",
            enable_idempotence=idempotent,
            linger_ms=self.settings.kafka_linger_ms,
            max_batch_size=self.settings.kafka_batch_bytes,
            compression_type=self.settings.kafka_compression or None,
            client_id=f"driftloop-{self.service}",
        )

    async def start(self) -> None:
        self._producer, self.idempotent = await self._started()

    async def _started(self) -> tuple[AIOKafkaProducer, bool]:
        """A started producer, idempotent when the settings and the broker allow it, and whether it is."""
        mode = self.settings.kafka_idempotence
        if mode != "off":
            producer = self._new_producer(idempotent=True)
            quiet = _QuietInitProducerId()
            logging.getLogger("aiokafka.producer.sender").addFilter(quiet)
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                if mode == "on":
                    raise
                log.info("broker grants no producer id; producing without idempotence", error=repr(exc))
            else:
                return producer, True
            finally:
                logging.getLogger("aiokafka.producer.sender").removeFilter(quiet)
        producer = self._new_producer(idempotent=False)
        await producer.start()
        return producer, False

    async def stop(self) -> None:
        if self._renewal is not None:
            await asyncio.gather(self._renewal, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    def _watch(self, producer: AIOKafkaProducer, future: asyncio.Future[object]) -> None:
        """Replace ``producer`` once the broker refuses its sequence numbers (see ``_LOST_SEQUENCE``)."""
        if future.cancelled() or not isinstance(future.exception(), _LOST_SEQUENCE):
            return
        if producer is self._producer and self._renewal is None:
            self._renewal = asyncio.create_task(self._renew(producer), name=f"renew-producer:{self.service}")

    async def _renew(self, lost: AIOKafkaProducer) -> None:
        """Send with a new producer id from now on; the refused sends are their callers' to retry."""
        try:
            self._producer, self.idempotent = await self._started()
            log.warning("producer replaced: the broker refused its sequence numbers", service=self.service)
            await lost.stop()
        except Exception:
            log.exception("producer not replaced; the next refused send tries again", service=self.service)
        finally:
            self._renewal = None

    async def publish(self, event: Contract, key: str | None, topic: str | None = None, *, wait: bool = True) -> None:
        """Produce ``event``; with ``wait=False`` the enclosing ``acknowledged()`` block awaits the broker."""
        await self.send(
            topic or topic_for(type(event)),
            event.model_dump_json().encode(),
            key,
            cloudevent_headers(event, f"driftloop/{self.service}", key),
            wait=wait,
        )

    async def send(self, topic: str, value: bytes, key: str | None, headers: Headers, *, wait: bool = True) -> None:
        """Produce an already-encoded record; with ``wait=False`` it leaves with its block's batch."""
        if wait:
            await (await self._hand_over(topic, value, key, headers))
            return
        pending = _pending.get()
        if pending is None:
            raise RuntimeError("send(wait=False) outside `async with bus.acknowledged()`: nobody would await it")
        pending.records.setdefault(topic, []).append((key.encode() if key is not None else None, value, headers, None))

    def defer(self, topic: str, records: Iterable[Outgoing]) -> None:
        """Add encoded records to the enclosing ``acknowledged()`` block's batch, partition given or keyed."""
        pending = _pending.get()
        if pending is None:
            raise RuntimeError("defer() outside `async with bus.acknowledged()`: nobody would send it")
        pending.records.setdefault(topic, []).extend(records)

    def encode_many(
        self, template: Envelope, changes: Sequence[Mapping[str, Any]], keys: Sequence[str | None]
    ) -> list[Outgoing]:
        """The records ``publish`` sends for ``template`` with each change applied, keyed by ``keys``.

        For many events of one contract that differ in a few fields (a batch's
        predictions): the template is validated once and dumped once, and each
        record's JSON is written by pydantic's own serializer from a dict, so
        it is byte for byte what the contract model gives, at about a third of
        the cost of building and dumping a model per record. The changes are
        not validated again: they must hold values of the fields' own types,
        as the code that computed them guarantees, and all name the same
        fields; a field the contract lacks (checked on the first) is refused.
        """
        base = template.model_dump()
        if unknown := {name for change in changes[:1] for name in change} - base.keys():
            raise ValueError(f"{type(template).__name__} has no field {sorted(unknown)}")
        constant = _constant_headers(type(template).EVENT_TYPE, f"driftloop/{self.service}")
        stamps: dict[datetime, bytes] = {}
        records: list[Outgoing] = []
        for change, key in zip(changes, keys, strict=True):
            fields = {**base, **change}
            at = fields["occurred_at"]
            stamp = stamps.get(at) or stamps.setdefault(at, at.isoformat().encode())
            lineage = (fields["correlation_id"], fields["causation_id"])
            headers = _headers(constant, fields["event_id"], stamp, key, lineage)
            value = to_json(fields, inf_nan_mode="null")
            records.append((key.encode() if key is not None else None, value, headers, None))
        return records

    async def publish_batch(self, topic: str, records: list[Outgoing]) -> list[asyncio.Future[object]]:
        """Hand encoded ``records`` to the producer now, as batches; the future of each one's acknowledgement,
        in order.

        For a caller that settles many records itself (deployment's prediction
        log): no coroutine or task per record, and each record's outcome apart
        (records of one batch share its future).
        """
        return await self._send_batched(topic, records)

    async def _hand_over(self, topic: str, value: bytes, key: str | None, headers: Headers) -> asyncio.Future[object]:
        assert self._producer is not None, "Bus.start() first"
        producer = self._producer
        future: asyncio.Future[object] = await producer.send(
            self.settings.topic(topic), value, key=key.encode() if key is not None else None, headers=headers
        )
        future.add_done_callback(partial(self._watch, producer))
        MESSAGES_PRODUCED.labels(self.service, topic).inc()
        return future

    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` (as the catalog names it) has, from the producer's metadata."""
        return await self._partitions(self.settings.topic(topic))

    async def _partitions(self, topic: str) -> int:
        assert self._producer is not None, "Bus.start() first"
        known = self._producer.client.cluster.partitions_for_topic(topic)
        return len(known) if known else len(await self._producer.partitions_for(topic))

    async def _send_batched(self, topic: str, records: list[Outgoing]) -> list[asyncio.Future[object]]:
        """Hand ``records`` to the producer as one closed batch per partition (several when one fills up);
        the future of each record's batch, in the records' order.

        A batch built here costs the producer about a tenth of what a record
        sent on its own does (no future, partitioner call or lingering per
        record), and a closed batch leaves without waiting out the linger.
        Keys go to the partition Kafka's default partitioner picks; records
        without key or partition are spread round-robin.
        """
        assert self._producer is not None, "Bus.start() first"
        producer = self._producer
        name = self.settings.topic(topic)
        count = await self._partitions(name)
        futures: dict[int, asyncio.Future[object]] = {}
        building: dict[int, tuple[BatchBuilder, list[int]]] = {}

        async def send(partition: int) -> None:
            batch, members = building.pop(partition)
            batch.close()
            sent = await producer.send_batch(batch, name, partition=partition)
            sent.add_done_callback(partial(self._watch, producer))
            futures.update(dict.fromkeys(members, sent))

        keyed = {i: key for i, (key, _, _, partition) in enumerate(records) if partition is None and key is not None}
        chosen = dict(zip(keyed, partitions_for(list(keyed.values()), count), strict=True))
        for index, (key, value, headers, partition) in enumerate(records):
            if partition is None:
                partition = chosen[index] if key is not None else next(self._spread) % count
            batch, members = building.setdefault(partition, (producer.create_batch(), []))
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                if members:
                    await send(partition)
                    batch, members = building.setdefault(partition, (producer.create_batch(), []))
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    # Larger than a whole batch: the producer sizes a batch of its own for it.
                    futures[index] = await producer.send(name, value, key=key, partition=partition, headers=headers)
                    futures[index].add_done_callback(partial(self._watch, producer))
                    continue
            members.append(index)
        for partition in [p for p, (_, members) in building.items() if members]:
            await send(partition)
        MESSAGES_PRODUCED.labels(self.service, topic).inc(len(records))
        return [futures[index] for index in range(len(records))]

    @asynccontextmanager
    async def acknowledged(self) -> AsyncIterator[None]:
        """Records sent with ``wait=False`` inside the block leave together when it ends, and are acknowledged
        before it returns; raise if one failed.

        Only this block's records: each caller (a consumer's batch, an HTTP
        request) has its own, so one caller never waits on, drains or fails
        another's sends. Consumers commit offsets after the block, so an offset
        is never committed for a record whose output the broker does not have.
        The records leave in the order they were sent, a batch per partition.
        """
        pending = _Pending()
        token = _pending.set(pending)
        try:
            yield
            for topic, records in pending.records.items():
                pending.futures += dict.fromkeys(await self._send_batched(topic, records))
        except BaseException:
            # The caller fails anyway; still collect the outcomes so none is left unretrieved.
            await asyncio.gather(*pending.futures, return_exceptions=True)
            raise
        finally:
            _pending.reset(token)
        await asyncio.gather(*pending.futures)

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """Within an ``acknowledged()`` block: the records deferred inside this block are dropped if it raises.

        A batch handler that fails half-way is run again (whole, or in halves
        to find the record that breaks it); what its failed run deferred must
        not leave as well.
        """
        pending = _pending.get()
        marks = {topic: len(records) for topic, records in pending.records.items()} if pending else {}
        try:
            yield
        except BaseException:
            if pending is not None:
                for topic, records in pending.records.items():
                    del records[marks.get(topic, 0) :]
            raise

    async def publish_many(self, events: list[tuple[Contract, str | None]]) -> None:
        """Send a batch concurrently and wait for every acknowledgement of this batch."""
        async with self.acknowledged():
            for event, key in events:
                await self.publish(event, key, wait=False)

    async def deadletter(self, record: DeadLetter) -> None:
        await self.publish(record, record.key)
        DEADLETTERS.labels(self.service, record.stage).inc()
