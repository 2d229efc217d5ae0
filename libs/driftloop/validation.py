"""Checks of producers' payloads against the dataset schema, shared by every service that reads them.

Ingestion validates events and labels sent over HTTP or ``events.raw``;
monitoring reads ``labels`` straight from Kafka. Both give the same verdict
with the same field-level reasons, because both call these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
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


#: The Python types a JSON value of each declared type is parsed into.
_JSON_TYPES: dict[str, frozenset[type]] = {
    "float": frozenset({int, float}),
    "int": frozenset({int}),
    "str": frozenset({str}),
    "bool": frozenset({bool}),
}


@dataclass(frozen=True, slots=True)
class ValueRule:
    """A spec's check compiled for the hot path: a value that passes costs a few operations, not
    ``check_value``'s type dispatch and attribute reads.

    It admits only values of the parsed JSON types themselves, in bounds and
    among the allowed ones; anything else (a wrong type, a subclass, NaN, a
    value out of bounds) is judged again by ``check_value``, so the verdict
    and its reason are always that function's.

    >>> rule = ValueRule.of(FeatureSpec(type="int", min=0, max=10))
    >>> rule.problem(3), rule.problem(11), rule.problem(True)
    (None, '11 is above the maximum 10.0', 'expected int, got bool True')
    """

    spec: FeatureSpec | LabelSpec
    types: frozenset[type]
    allowed: frozenset[str | int | bool] | None
    bounded: bool
    low: float
    high: float

    @classmethod
    def of(cls, spec: FeatureSpec | LabelSpec) -> ValueRule:
        low = spec.min if isinstance(spec, FeatureSpec) else None
        high = spec.max if isinstance(spec, FeatureSpec) else None
        return cls(
            spec=spec,
            types=_JSON_TYPES[spec.type],
            allowed=None if spec.allowed is None else frozenset(spec.allowed),
            # check_value compares only numbers with the bounds, and a string value must be a str.
            bounded=spec.type != "str" and (low is not None or high is not None),
            low=float("-inf") if low is None else low,
            high=float("inf") if high is None else high,
        )

    def problem(self, value: FeatureValue) -> str | None:
        """Why ``value`` does not fit the spec, or None when it does: ``check_value``'s answer."""
        if (
            type(value) in self.types
            and (self.allowed is None or value in self.allowed)
            and (not self.bounded or self.low <= value <= self.high)  # type: ignore[operator]
        ):
            return None
        return check_value(value, self.spec)


def validate_label(payload: Any, spec: LabelSpec) -> LabelEvent:
    """A ``LabelEvent`` whose label has the schema's type (so "1" and 1 never both count), or ``Invalid``."""
    try:
        label = LabelEvent.model_validate(payload)
    except ValidationError as exc:
        raise Invalid(pydantic_errors(exc)) from exc
    if problem := check_value(label.label, spec):
        raise Invalid([FieldError(field="label", message=problem)])
    return label
