"""A contract's reader gives every record ``Record.parse``'s verdict: the model's values, or its reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftloop.bus import PoisonMessage, Record
from driftloop.bus.reader import ContractReader
from driftloop.contracts import Contract, EventValidated, FeatureVector, LabelEvent

MODELS: list[type[Contract]] = [EventValidated, FeatureVector, LabelEvent]
READERS = {model: ContractReader(model) for model in MODELS}

moments = st.datetimes(
    min_value=datetime(1970, 1, 2), timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), None])
)
rfc3339 = moments.filter(lambda m: m.tzinfo is not None).map(lambda m: m.isoformat().replace("+00:00", "Z"))
#: Times as producers and older versions may write them: RFC 3339, naive, a date, a Unix time (number or text).
times = st.one_of(
    moments.map(lambda m: m.isoformat()),
    moments.map(lambda m: m.isoformat().replace("+00:00", "Z")),
    moments.map(lambda m: m.date().isoformat()),
    moments.map(lambda m: m.replace(tzinfo=None).timestamp()),
    moments.map(lambda m: str(int(m.replace(tzinfo=None).timestamp()))),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**80),
    st.floats(),
    st.text(max_size=4),
)
values = st.one_of(
    scalars,
    times,
    st.sampled_from([EventValidated.EVENT_TYPE, FeatureVector.EVENT_TYPE, "io.driftloop.other.v1"]),
    st.dictionaries(st.text(max_size=3), scalars, max_size=4),
    st.lists(scalars, max_size=2),
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value of the field's type nine times in ten, else anything."""
    return st.integers(0, 9).flatmap(lambda roll: values if roll == 9 else good)


#: Each field's values as driftloop writes them (the times in RFC 3339, as pydantic writes them).
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.text(min_size=1, max_size=3),
    "schema_version": st.integers(-2, 2),
    "occurred_at": rfc3339,
    "correlation_id": st.text(max_size=3),
    "causation_id": st.none() | st.text(max_size=3),
    "entity_id": st.text(max_size=3),
    "event_time": rfc3339,
    "feature_view": st.text(max_size=3),
    "features": st.dictionaries(st.text(max_size=3), scalars, max_size=5),
    "label": scalars,
    "label_time": st.none() | rfc3339,
}


def payloads(model: type[Contract]) -> st.SearchStrategy[dict[str, Any]]:
    """Every field of the model, most of them holding a value of their type, some missing; unknown fields."""
    own = {"event_type": st.sampled_from([getattr(model, "EVENT_TYPE", "")])}
    fields = {name: mostly({**FIELDS, **own}[name]) for name in model.model_fields}
    anything = st.dictionaries(st.sampled_from([*fields, "unknown", "lable"]), values, max_size=len(fields) + 2)
    near = st.fixed_dictionaries(fields, optional={"unknown": values}).flatmap(
        lambda payload: st.sets(st.sampled_from(sorted(payload)), max_size=1).map(
            lambda dropped: {k: v for k, v in payload.items() if k not in dropped}
        )
    )
    return near | anything


def verdict(outcome: dict[str, Any] | PoisonMessage, payload: dict[str, Any]) -> Any:
    """What a record's reading says, in a form that tells an int from a float and one offset from another.

    A field the payload leaves to a default factory (a fresh id, the current time) is compared by type.
    """
    if isinstance(outcome, PoisonMessage):
        return ("rejected", outcome.reason, [(e.field, e.message) for e in outcome.errors])
    return {
        name: type(value).__name__
        if name not in payload and name in {"event_id", "correlation_id", "occurred_at"}
        else _typed(value)
        for name, value in outcome.items()
    }


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return (value.isoformat(), value.utcoffset())
    return (type(value).__name__, repr(value))


def _outcome(read: Any, record: Record) -> dict[str, Any] | PoisonMessage:
    try:
        return read(record)  # type: ignore[no-any-return]
    except PoisonMessage as exc:
        return exc


def _valid(model: type[Contract]) -> dict[str, Any]:
    """A payload as driftloop writes it, so the strategy reaches the strict path too."""
    event: dict[str, Any] = {
        "event_id": "e-1",
        "entity_id": "c-1",
        "event_time": "2026-03-10T12:00:00.250000Z",
        "feature_view": "v",
        "features": {"x": 1.5, "n": 3, "flag": True, "city": "Lyon", "gone": None},
        "label": None,
    }
    if model is LabelEvent:
        return {"event_id": "e-1", "label": 1}
    return json.loads(model.model_validate(event).model_dump_json())


PAYLOADS = {model: payloads(model) | st.just(_valid(model)) for model in MODELS}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"event_id": "e-1", "entity_id": "c", "event_time": "yesterday", "features": {}}', "event_time"),
        (b'{"event_id": "e-1", "entity_id": "c", "event_time": "2026-03-10T12:00:00Z", "features": [1]}', "features"),
        (b'{"event_id": "e-1", "event_time": "2026-03-10T12:00:00Z", "features": {"x": {"y": 1}}}', "features.x"),
        (b'{"event_id": "e-1", "entity_id": 7, "event_time": "2026-03-10T12:00:00Z", "features": {}}', "entity_id"),
        (b"not json", "$"),
    ],
)
def test_a_record_that_breaks_its_contract_is_rejected_naming_the_field(raw: bytes, field: str) -> None:
    good, bad = READERS[EventValidated].read_all([Record("events.validated", 0, 3, "c", raw)])
    assert good == []
    [(record, poison)] = bad
    assert record.offset == 3
    assert any(e.field == field or e.field.startswith(f"{field}.") for e in poison.errors), poison.reason


def test_the_records_that_fit_are_read_in_order_beside_those_that_do_not() -> None:
    valid = json.dumps(_valid(FeatureVector)).encode()
    records = [Record("features", 0, i, None, raw) for i, raw in enumerate([valid, b"{}", valid])]
    good, bad = READERS[FeatureVector].read_all(records)
    assert [r.offset for r, _ in good] == [0, 2] and [r.offset for r, _ in bad] == [1]
    assert good[0][1] == FeatureVector.model_validate_json(valid).model_dump()


def test_a_model_the_strict_view_cannot_mirror_is_refused() -> None:
    from pydantic import field_validator

    class Checked(Contract):
        x: int

        @field_validator("x")
        @classmethod
        def positive(cls, value: int) -> int:
            return abs(value)

    with pytest.raises(TypeError, match="validators"):
        ContractReader(Checked)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@given(data=st.data())
def test_a_record_read_fast_gets_the_verdict_and_values_of_the_model(
    model: type[Contract], data: st.DataObject
) -> None:
    payload = data.draw(PAYLOADS[model])
    record = Record("t", 0, 0, None, json.dumps(payload).encode())
    expected = _outcome(lambda r: r.parse(model).model_dump(), record)
    assert verdict(_outcome(READERS[model].read, record), payload) == verdict(expected, payload)
