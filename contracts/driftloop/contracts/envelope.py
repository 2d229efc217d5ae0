"""The envelope every internal event carries.

Producers' payloads (``DataEvent``, ``LabelEvent``) stay exactly as the public
producer contract says; everything the services emit extends ``Envelope`` so a
single ``correlation_id`` can follow one turn of the loop (drift -> run ->
version -> rollout) across topics, and ``causation_id`` names the event that
caused this one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return uuid.uuid4().hex


class Contract(BaseModel):
    """Base of every payload: unknown fields are an error, so typos surface."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: CloudEvents ``type``; also the name of the payload's JSON Schema.
    EVENT_TYPE: ClassVar[str]


class Envelope(Contract):
    event_id: str = Field(default_factory=new_event_id, min_length=1)
    event_type: str
    schema_version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)
    correlation_id: str = Field(default_factory=new_event_id)
    causation_id: str | None = None

    def caused(self) -> dict[str, str]:
        """Lineage fields for an event this one causes."""
        return {"correlation_id": self.correlation_id, "causation_id": self.event_id}
