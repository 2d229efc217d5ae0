"""Every payload survives the wire unchanged, and the parsers pick and police the right model.

Instances are drawn from the models' own field annotations, so a field added
later is covered without touching this file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from driftloop.contracts import Contract, DataEvent, InternalEvent, parse_internal, payload_types
from driftloop.contracts.export import schema_documents

#: JSON has no NaN or infinity: pydantic writes them as null, which a float field then rejects.
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
#: RFC 3339 offsets are whole minutes; pydantic drops the seconds of historical offsets like +00:17:30.
OFFSETS = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
TIMES = st.datetimes(timezones=st.none() | st.just(UTC) | OFFSETS)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | FLOATS | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
SCALARS: dict[Any, st.SearchStrategy[Any]] = {float: FLOATS, datetime: TIMES, Any: JSON_VALUES}

INTERNAL_TYPES = [p for p in payload_types() if "event_type" in p.model_fields]


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """Explicit where ``st.from_type`` would produce values JSON can't carry (NaN, ``object()``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return models(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        return st.one_of(*map(strategy_for, args))
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(), strategy_for(args[1]), max_size=3)
    return SCALARS[annotation] if annotation in SCALARS else st.from_type(annotation)


def _field(info: FieldInfo) -> st.SearchStrategy[Any]:
    """Constraints such as ``min_length`` are annotated-types metadata, which ``from_type`` honours."""
    if info.metadata:
        return st.from_type(Annotated[(info.annotation, *info.metadata)])
    return strategy_for(info.annotation)


@cache
def models(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    """Optional fields are sometimes left out, so defaults and default factories are exercised too."""
    fields = model.model_fields
    required = {name: _field(info) for name, info in fields.items() if info.is_required()}
    optional = {name: _field(info) for name, info in fields.items() if not info.is_required()}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kwargs: model(**kwargs))


PAYLOADS = st.sampled_from(payload_types()).flatmap(models)


@given(PAYLOADS)
def test_every_payload_round_trips_through_json(payload: Contract) -> None:
    text = payload.model_dump_json()
    parsed = type(payload).model_validate_json(text)
    assert parsed == payload
    assert parsed.model_dump_json() == text, "equal but not identical: e.g. a bool read back as an int"


def test_every_payload_matches_its_exported_schema() -> None:
    """The schemas are what other languages validate against, so real payloads must pass them."""
    jsonschema = pytest.importorskip("jsonschema")
    validators = {
        name.removesuffix(".json"): jsonschema.Draft202012Validator(schema)
        for name, schema in schema_documents().items()
    }

    @given(PAYLOADS)
    def check(payload: Contract) -> None:
        validators[payload.EVENT_TYPE].validate(json.loads(payload.model_dump_json()))

    check()


def test_internal_event_union_covers_every_internal_payload() -> None:
    union = get_args(get_args(InternalEvent)[0])
    assert set(union) == set(INTERNAL_TYPES)


@given(st.sampled_from(INTERNAL_TYPES).flatmap(models))
def test_parse_internal_picks_the_model_by_event_type(event: Contract) -> None:
    parsed = parse_internal(event.model_dump_json())
    assert type(parsed) is type(event)
    assert parsed == event


@given(models(DataEvent), st.text().filter(lambda name: name not in DataEvent.model_fields), JSON_VALUES)
def test_data_event_rejects_unknown_fields(event: DataEvent, name: str, value: Any) -> None:
    assert _errors({**json.loads(event.model_dump_json()), name: value}) == [("extra_forbidden", (name,))]


REQUIRED = [name for name, info in DataEvent.model_fields.items() if info.is_required()]
VALID_RAW = {"event_id": "e-1", "entity_id": "u-1", "event_time": "2024-01-01T00:00Z", "features": {"x": 1}}


def _errors(raw: dict[str, Any]) -> list[tuple[str, tuple[str | int, ...]]]:
    with pytest.raises(ValidationError) as error:
        DataEvent.model_validate_json(json.dumps(raw))
    return [(e["type"], e["loc"]) for e in error.value.errors()]


def test_data_event_requires_what_the_producer_contract_says() -> None:
    assert REQUIRED == ["event_id", "entity_id", "event_time", "features"]
    DataEvent.model_validate(VALID_RAW)


@pytest.mark.parametrize("missing", REQUIRED)
def test_data_event_rejects_a_missing_required_field(missing: str) -> None:
    raw = {name: value for name, value in VALID_RAW.items() if name != missing}
    assert _errors(raw) == [("missing", (missing,))]


@pytest.mark.parametrize(("value", "error"), [("", "string_too_short"), (None, "string_type")])
def test_data_event_rejects_an_empty_event_id(value: str | None, error: str) -> None:
    assert _errors({**VALID_RAW, "event_id": value}) == [(error, ("event_id",))]
