"""``events.raw`` in, ``events.validated`` or ``events.deadletter`` out."""

from __future__ import annotations

from driftloop.bus import Bus, MemoryDeduper, PoisonMessage, Record
from driftloop.config import DatasetSchema
from driftloop.contracts import utcnow
from driftloop.services.ingestion.domain import Invalid, parse_json, validate_event, validated


class RawEventHandler:
    def __init__(self, bus: Bus, schema: DatasetSchema) -> None:
        self.bus = bus
        self.schema = schema
        #: Producers' events carry no CloudEvents id header, so dedupe here on the payload's event_id.
        self.seen = MemoryDeduper()

    async def __call__(self, record: Record) -> None:
        try:
            event = validate_event(parse_json(record.value), self.schema, utcnow())
        except Invalid as exc:
            raise PoisonMessage(str(exc), exc.errors) from exc
        if self.seen.seen(event.event_id):
            return
        await self.bus.publish(validated(event), key=event.entity_id)
        self.seen.mark(event.event_id)
