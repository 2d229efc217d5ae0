"""Validation of producer events against the contract and the configured dataset schema.

Pure functions: the consumer of ``events.raw`` and the HTTP endpoint call the
same ones, so a Kafka producer and an HTTP client get the same verdict and the
same field-level reasons.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from driftloop.config import DatasetSchema
from driftloop.contracts import DataEvent, FieldError
from driftloop.validation import Invalid, ValueRule, pydantic_errors


def parse_json(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid([FieldError(field="$", message=f"malformed JSON: {exc}")]) from exc


def judged_at(arrived: datetime | None, now: datetime) -> datetime:
    """The instant an event's freshness is judged at: when it reached driftloop, not when it is read.

    ``arrived`` is the Kafka record's timestamp (or an HTTP request's arrival),
    so replaying history, catching up after an outage or re-reading after lost
    group offsets gives each event the verdict it had on arrival. A timestamp
    ahead of our own clock (a producer's clock running fast) is not believed:
    an event cannot have arrived later than now.

    >>> now = datetime(2026, 3, 10, tzinfo=UTC)
    >>> judged_at(datetime(2026, 3, 1, tzinfo=UTC), now).day, judged_at(None, now).day
    (1, 10)
    >>> judged_at(datetime(2026, 4, 1, tzinfo=UTC), now).day
    10
    """
    return now if arrived is None else min(arrived, now)


class SchemaCheck:
    """A dataset schema compiled once for the events it judges: every rule built before the first event.

    Ingestion judges every event against every feature, so each feature's
    rule (``ValueRule``) and its error field name are made here, once, not
    per value.
    """

    def __init__(self, schema: DatasetSchema) -> None:
        self.schema = schema
        self.features = [
            (name, f"features.{name}", spec.required, ValueRule.of(spec)) for name, spec in schema.features.items()
        ]
        self.label = ValueRule.of(schema.label)

    def errors(self, event: DataEvent, now: datetime) -> list[FieldError]:
        """Every way ``event`` breaks the schema; freshness is judged as of ``now`` (see ``judged_at``)."""
        schema = self.schema
        features = event.features
        errors: list[FieldError] = []
        for name, field, required, rule in self.features:
            value = features.get(name)
            if value is None:
                if required:
                    errors.append(FieldError(field=field, message="required feature is missing"))
            elif problem := rule.problem(value):
                errors.append(FieldError(field=field, message=problem))
        if not schema.allow_unknown_features and not features.keys() <= schema.features.keys():
            errors += [
                FieldError(field=f"features.{name}", message="not a feature of the dataset schema")
                for name in features
                if name not in schema.features
            ]
        if event.label is not None and (problem := self.label.problem(event.label)):
            errors.append(FieldError(field="label", message=problem))
        event_time = event.event_time if event.event_time.tzinfo else event.event_time.replace(tzinfo=UTC)
        if now - event_time > schema.max_event_age:
            errors.append(
                FieldError(field="event_time", message=f"older than the freshness limit {schema.max_event_age}")
            )
        if event_time - now > schema.max_clock_skew:
            errors.append(FieldError(field="event_time", message=f"more than {schema.max_clock_skew} in the future"))
        return errors


def validate_event(payload: Any, check: SchemaCheck, now: datetime) -> DataEvent:
    """A ``DataEvent`` that satisfies contract and schema, or ``Invalid`` with every reason."""
    try:
        event = DataEvent.model_validate(payload)
    except ValidationError as exc:
        raise Invalid(pydantic_errors(exc)) from exc
    if errors := check.errors(event, now):
        raise Invalid(errors)
    if event.event_time.tzinfo is None:
        event = event.model_copy(update={"event_time": event.event_time.replace(tzinfo=UTC)})
    return event


def validated(event: DataEvent) -> dict[str, Any]:
    """The fields of the event as the rest of the system sees it (``EventValidated``), all but the instant
    it was validated at; its ``event_id`` stays the producer's.

    A batch's records are encoded from these (``Bus.encode_many``) without
    validating each again: every value comes from a validated ``DataEvent``,
    and a second validation of each event cost ingestion more than its own
    checks.
    """
    return {
        "event_id": event.event_id,
        "correlation_id": event.event_id,
        "entity_id": event.entity_id,
        "event_time": event.event_time,
        "features": event.features,
        "label": event.label,
    }


class TooMany(Exception):
    """A request body with more items than one request may carry."""


def split_body(body: bytes, content_type: str, limit: int) -> list[Any]:
    """One JSON object, a JSON array, or NDJSON (one object per line); ``TooMany`` past ``limit`` items.

    NDJSON stops at the first line over the limit, so the lines after it are never parsed.

    >>> split_body(b'{"a": 1}\\n{"a": 2}\\n', "application/x-ndjson", 2)
    [{'a': 1}, {'a': 2}]
    >>> split_body(b'{"a": 1}\\n{"a": 2}\\n{"a": 3}', "application/x-ndjson", 2)
    Traceback (most recent call last):
    ...
    driftloop.services.ingestion.domain.TooMany: at most 2 items per request
    """
    if "ndjson" in content_type or "jsonlines" in content_type:
        items: list[Any] = []
        for number, line in enumerate(body.splitlines()):
            if line.strip():
                if len(items) == limit:
                    raise TooMany(f"at most {limit} items per request")
                try:
                    items.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise Invalid([FieldError(field=f"line {number + 1}", message=f"malformed JSON: {exc}")]) from exc
        return items
    parsed = parse_json(body)
    items = parsed if isinstance(parsed, list) else [parsed]
    if len(items) > limit:
        raise TooMany(f"at most {limit} items per request")
    return items
