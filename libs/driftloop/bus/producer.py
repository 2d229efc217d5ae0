"""Publishing: the payload is plain JSON, the envelope travels as CloudEvents headers."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from driftloop.contracts import Contract, DeadLetter, Envelope, FieldError, topic_for, utcnow
from driftloop.metrics import DEADLETTERS, MESSAGES_PRODUCED
from driftloop.settings import DriftloopSettings

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
) -> DeadLetter:
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=key,
        payload=payload.decode("utf-8", errors="backslashreplace"),
        reason=reason,
        errors=errors or [],
        stage=stage,
        original_event_id=original_event_id,
    )


class Bus:
    """One producer per process; ``publish`` returns once the broker has the record."""

    def __init__(self, settings: DriftloopSettings, service: str) -> None:
        self.settings = settings
        self.service = service
        self._inflight: list[asyncio.Future[object]] = []
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            acks="all",
            linger_ms=5,
            client_id=f"driftloop-{service}",
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, event: Contract, key: str | None, topic: str | None = None, *, wait: bool = True) -> None:
        """Produce ``event``; with ``wait=False`` the acknowledgement is awaited by the next ``flush``."""
        await self.send(
            topic or topic_for(type(event)),
            event.model_dump_json().encode(),
            key,
            cloudevent_headers(event, f"driftloop/{self.service}", key),
            wait=wait,
        )

    async def send(self, topic: str, value: bytes, key: str | None, headers: Headers, *, wait: bool = True) -> None:
        """Produce an already-encoded record."""
        future = await self._producer.send(
            self.settings.topic(topic), value, key=key.encode() if key is not None else None, headers=headers
        )
        MESSAGES_PRODUCED.labels(self.service, topic).inc()
        if wait:
            await future
        else:
            self._inflight.append(future)

    async def flush(self) -> None:
        """Wait until every record sent with ``wait=False`` is acknowledged; raise if one failed.

        Consumers call this before committing offsets, so an offset is never
        committed for a record whose output the broker does not have.
        """
        inflight, self._inflight = self._inflight, []
        for future in inflight:
            await future

    async def publish_many(self, events: list[tuple[Contract, str | None]]) -> None:
        """Send a batch concurrently and wait for every acknowledgement."""
        for event, key in events:
            await self.publish(event, key, wait=False)
        await self.flush()

    async def deadletter(self, record: DeadLetter) -> None:
        await self.publish(record, record.key)
        DEADLETTERS.labels(self.service, record.stage).inc()
