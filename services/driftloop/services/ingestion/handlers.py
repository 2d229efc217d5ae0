"""``events.raw`` in, ``events.validated`` or ``events.deadletter`` out."""

from __future__ import annotations

import orjson

from driftloop.bus import Bus, PoisonMessage, Record
from driftloop.contracts import EventValidated, topic_for, utcnow
from driftloop.services.ingestion.domain import SchemaCheck, judged_at, parse_json, validate_event, validated
from driftloop.validation import Invalid


def producer_event_id(record: Record) -> str | None:
    """Producers' records carry no CloudEvents header: the idempotency key is the payload's ``event_id``."""
    if record.event_id:
        return record.event_id
    try:
        payload = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    event_id = payload.get("event_id") if isinstance(payload, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


class RawEventHandler:
    """Validates a batch of producer events and sends the good ones on as one batch.

    The consumer loop awaits every acknowledgement of the batch before it
    commits, so the batch costs one broker round trip, not one per event.
    """

    def __init__(self, bus: Bus, check: SchemaCheck) -> None:
        self.bus = bus
        self.check = check

    async def __call__(self, records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
        now = utcnow()
        rejected = []
        changes = []
        for record in records:
            try:
                event = validate_event(parse_json(record.value), self.check, judged_at(record.timestamp, now))
            except Invalid as exc:
                rejected.append((record, PoisonMessage(str(exc), exc.errors)))
                continue
            changes.append(validated(event))
        if changes:
            template = EventValidated(**changes[0], occurred_at=now)
            keys = [change["entity_id"] for change in changes]
            self.bus.defer(topic_for(EventValidated), self.bus.encode_many(template, changes, keys))
        return rejected
