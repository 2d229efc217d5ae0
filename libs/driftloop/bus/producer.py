"""Publishing: the payload is plain JSON, the envelope travels as CloudEvents headers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from driftloop.contracts import Contract, DeadLetter, Envelope, FieldError, topic_for, utcnow
from driftloop.logging import get_logger
from driftloop.metrics import DEADLETTERS, MESSAGES_PRODUCED
from driftloop.settings import DriftloopSettings

log = get_logger(__name__)

Headers = list[tuple[str, bytes]]


def cloudevent_headers(event: Contract, source: str, subject: str | None) -> Headers:
    """Binary-mode CloudEvents attributes, so any CloudEvents tool can route the record."""
    if isinstance(event, Envelope):
        event_id, time = event.event_id, event.occurred_at
        lineage = {"correlation_id": event.correlation_id, "causation_id": event.causation_id}
    else:
        event_id, time, lineage = str(getattr(event, "event_id", "")), utcnow(), {}
    attributes: dict[str, str | None] = {
        "ce_specversion": "1.0",
        "ce_id": event_id,
        "ce_source": source,
        "ce_type": event.EVENT_TYPE,
        "ce_time": time.isoformat(),
        "ce_subject": subject,
        "content-type": "application/json",
        **lineage,
    }
    return [(k, v.encode()) for k, v in attributes.items() if v is not None]


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


#: The acknowledgements the current caller waits for; set by ``Bus.acknowledged`` for one block.
_pending: ContextVar[list[asyncio.Future[object]] | None] = ContextVar("driftloop_pending_sends", default=None)


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
                self._producer, self.idempotent = producer, True
                return
            finally:
                logging.getLogger("aiokafka.producer.sender").removeFilter(quiet)
        self._producer = self._new_producer(idempotent=False)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

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
        """Produce an already-encoded record."""
        pending = _pending.get()
        if not wait and pending is None:
            raise RuntimeError("send(wait=False) outside `async with bus.acknowledged()`: nobody would await it")
        future = await self._hand_over(topic, value, key, headers)
        if wait:
            await future
        else:
            assert pending is not None
            pending.append(future)

    async def enqueue(self, event: Contract, key: str | None) -> asyncio.Future[object]:
        """Hand ``event`` to the producer and return the future of its acknowledgement, which the caller owns.

        For a caller that settles many records itself (deployment's prediction
        log): no coroutine or task per record, and each record's outcome apart.
        """
        topic = topic_for(type(event))
        headers = cloudevent_headers(event, f"driftloop/{self.service}", key)
        return await self._hand_over(topic, event.model_dump_json().encode(), key, headers)

    async def _hand_over(self, topic: str, value: bytes, key: str | None, headers: Headers) -> asyncio.Future[object]:
        assert self._producer is not None, "Bus.start() first"
        future: asyncio.Future[object] = await self._producer.send(
            self.settings.topic(topic), value, key=key.encode() if key is not None else None, headers=headers
        )
        MESSAGES_PRODUCED.labels(self.service, topic).inc()
        return future

    @asynccontextmanager
    async def acknowledged(self) -> AsyncIterator[None]:
        """Records sent with ``wait=False`` inside the block are acknowledged when it ends; raise if one failed.

        Only this block's records: each caller (a consumer's batch, an HTTP
        request) has its own, so one caller never waits on, drains or fails
        another's sends. Consumers commit offsets after the block, so an offset
        is never committed for a record whose output the broker does not have.
        """
        futures: list[asyncio.Future[object]] = []
        token = _pending.set(futures)
        try:
            yield
        except BaseException:
            # The caller fails anyway; still collect the outcomes so none is left unretrieved.
            await asyncio.gather(*futures, return_exceptions=True)
            raise
        finally:
            _pending.reset(token)
        await asyncio.gather(*futures)

    async def publish_many(self, events: list[tuple[Contract, str | None]]) -> None:
        """Send a batch concurrently and wait for every acknowledgement of this batch."""
        async with self.acknowledged():
            for event, key in events:
                await self.publish(event, key, wait=False)

    async def deadletter(self, record: DeadLetter) -> None:
        await self.publish(record, record.key)
        DEADLETTERS.labels(self.service, record.stage).inc()
