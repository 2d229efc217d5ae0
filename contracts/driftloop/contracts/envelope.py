"""The envelope every internal event carries.

Producers' payloads (``DataEvent``, ``LabelEvent``) stay exactly as the public
producer contract says; everything the services emit extends ``Envelope`` so a
single ``correlation_id`` can follow one turn of the loop (drift -> run ->
version -> rollout) across topics, and ``causation_id`` names the event that
caused this one.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return uuid.uuid4().hex


def new_event_ids(count: int) -> list[str]:
    """``count`` ids of the form ``new_event_id`` gives (random UUID4s, as hex), from one read of the
    system's randomness: a prediction request of a hundred rows made a hundred reads, a tenth of its time.

    >>> ids = new_event_ids(3)
    >>> len(set(ids)), [uuid.UUID(i).version for i in ids], all(len(i) == 32 for i in ids)
    (3, [4, 4, 4], True)
    """
    raw = bytearray(os.urandom(16 * count))
    for start in range(0, len(raw), 16):
        raw[start + 6] = (raw[start + 6] & 0x0F) | 0x40  # version 4
        raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80  # the RFC 4122 variant
    digits = raw.hex()
    return [digits[start : start + 32] for start in range(0, len(digits), 32)]


class Contract(BaseModel):
    """Base of every payload: unknown fields are ignored when read.

    A producer upgraded before its consumers may add an optional field; an
    older consumer must still read the record (and act on it) rather than
    reject it, or a new field would silently stop the loop. The compatibility
    check (``driftloop.contracts.compat``) holds every change to that rule.
    """

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    #: CloudEvents ``type``; also the name of the payload's JSON Schema.
    EVENT_TYPE: ClassVar[str]


class ProducerContract(Contract):
    """A payload users' producers write: unknown fields are an error.

    The producer contract is the system's edge: a misspelt field (``lable``)
    is dead-lettered, or refused over HTTP with a 422, instead of its value
    being dropped without a word. Producers outside driftloop are not
    upgraded in step with it, so new fields here are never expected.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
