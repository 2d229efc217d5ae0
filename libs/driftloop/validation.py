"""Checks of producers' payloads against the dataset schema, shared by every service that reads them.

Ingestion validates events and labels sent over HTTP or ``events.raw``;
monitoring reads ``labels`` straight from Kafka. Both give the same verdict
with the same field-level reasons, because both call these functions.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from driftloop.config import FeatureSpec, LabelSpec
from driftloop.contracts import FieldError, LabelEvent
from driftloop.contracts.events import FeatureValue


class Invalid(Exception):
    """The payload breaks the contract or the schema; ``errors`` name each field and why."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


_TYPE_CHECKS = {
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
}


def pydantic_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    return [
        FieldError(field=prefix + (".".join(str(p) for p in e["loc"]) or "$"), message=e["msg"]) for e in exc.errors()
    ]


def check_value(value: FeatureValue, spec: FeatureSpec | LabelSpec) -> str | None:
    """Why ``value`` does not fit ``spec``, or None when it does."""
    if not _TYPE_CHECKS[spec.type](value):
        return f"expected {spec.type}, got {type(value).__name__} {value!r}"
    if spec.allowed is not None and value not in spec.allowed:
        return f"{value!r} is not one of {spec.allowed}"
    if isinstance(spec, FeatureSpec) and isinstance(value, int | float):
        if spec.min is not None and value < spec.min:
            return f"{value} is below the minimum {spec.min}"
        if spec.max is not None and value > spec.max:
            return f"{value} is above the maximum {spec.max}"
    return None


def validate_label(payload: Any, spec: LabelSpec) -> LabelEvent:
    """A ``LabelEvent`` whose label has the schema's type (so "1" and 1 never both count), or ``Invalid``."""
    try:
        label = LabelEvent.model_validate(payload)
    except ValidationError as exc:
        raise Invalid(pydantic_errors(exc)) from exc
    if problem := check_value(label.label, spec):
        raise Invalid([FieldError(field="label", message=problem)])
    return label
