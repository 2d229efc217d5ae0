"""Validation rules of the dataset schema, as pure functions."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftloop.config import load_config
from driftloop.contracts import utcnow
from driftloop.services.ingestion.domain import SchemaCheck, judged_at, split_body, validate_event
from driftloop.validation import Invalid, validate_label
from tests.support import APPLICATION

SCHEMA = load_config(Path(__file__).resolve().parents[2] / "driftloop.yaml").dataset
CHECK = SchemaCheck(SCHEMA)
NOW = utcnow()


def event(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e",
        "entity_id": "c",
        "event_time": NOW.isoformat(),
        "features": dict(APPLICATION),
    }
    return {**base, **overrides}


def fields(payload: object) -> list[str]:
    with pytest.raises(Invalid) as info:
        validate_event(payload, CHECK, NOW)
    return [e.field for e in info.value.errors]


MONTH_AGO = NOW - timedelta(days=30)


@pytest.mark.parametrize(
    ("arrived", "judged"),
    [
        (MONTH_AGO, MONTH_AGO),
        (None, NOW),
        (NOW + timedelta(days=3), NOW),
    ],
    ids=["record-time", "no-record-time", "record-time-ahead-of-our-clock"],
)
def test_freshness_is_judged_when_the_event_arrived_never_later_than_now(
    arrived: datetime | None, judged: datetime
) -> None:
    assert judged_at(arrived, NOW) == judged


def test_an_event_read_a_month_after_it_arrived_fresh_is_still_valid() -> None:
    """A replay, or a consumer back from a long outage: the verdict is the one the event had on arrival."""
    late = event(event_time=(MONTH_AGO - timedelta(hours=1)).isoformat())
    assert validate_event(late, CHECK, judged_at(MONTH_AGO, NOW)).event_id == "e"
    with pytest.raises(Invalid, match="older than the freshness limit"):
        validate_event(late, CHECK, judged_at(None, NOW))


def test_an_event_too_old_when_it_arrived_stays_invalid_on_replay() -> None:
    stale = event(event_time=(MONTH_AGO - timedelta(days=2)).isoformat())
    with pytest.raises(Invalid, match="older than the freshness limit"):
        validate_event(stale, CHECK, judged_at(MONTH_AGO, NOW))


def test_a_valid_event_passes_and_keeps_its_id() -> None:
    assert validate_event(event(), CHECK, NOW).event_id == "e"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (event(event_id=""), ["event_id"]),
        ({k: v for k, v in event().items() if k != "features"}, ["features"]),
        (event(features={**APPLICATION, "age": "old"}), ["features.age"]),
        (event(features={**APPLICATION, "age": True}), ["features.age"]),
        (event(features={**APPLICATION, "salary": -1}), ["features.salary"]),
        (event(features={k: v for k, v in APPLICATION.items() if k != "loan"}), ["features.loan"]),
        (event(features={**APPLICATION, "shoe_size": 44}), ["features.shoe_size"]),
        (event(label=3), ["label"]),
        (event(event_time=(NOW - timedelta(days=2)).isoformat()), ["event_time"]),
        (event(event_time=(NOW + timedelta(hours=1)).isoformat()), ["event_time"]),
        (event(colour="red"), ["colour"]),
    ],
)
def test_each_broken_rule_names_its_field(payload: object, expected: list[str]) -> None:
    assert fields(payload) == expected


def test_every_problem_of_one_event_is_reported_at_once() -> None:
    assert fields(event(features={**APPLICATION, "age": 5, "elevel": 9}, label="yes")) == [
        "features.age",
        "features.elevel",
        "label",
    ]


def test_an_int_is_a_valid_float_but_a_float_is_not_an_int() -> None:
    validate_event(event(features={**APPLICATION, "salary": 50_000}), CHECK, NOW)
    assert fields(event(features={**APPLICATION, "age": 40.5})) == ["features.age"]


def test_naive_event_times_are_taken_as_utc() -> None:
    naive = NOW.replace(tzinfo=None).isoformat()
    assert validate_event(event(event_time=naive), CHECK, NOW).event_time.tzinfo is not None


def test_labels_are_checked_against_the_label_spec() -> None:
    assert validate_label({"event_id": "e", "label": 1}, SCHEMA.label).label == 1
    with pytest.raises(Invalid):
        validate_label({"event_id": "e", "label": 2}, SCHEMA.label)


def test_bodies_may_be_an_object_an_array_or_ndjson() -> None:
    assert split_body(b'{"a": 1}', "application/json", 10) == [{"a": 1}]
    assert split_body(b'[{"a": 1}, {"a": 2}]', "application/json", 10) == [{"a": 1}, {"a": 2}]
    assert split_body(b'{"a": 1}\n\n{"a": 2}\n', "application/x-ndjson", 10) == [{"a": 1}, {"a": 2}]
    with pytest.raises(Invalid) as info:
        split_body(b'{"a": 1}\n{oops', "application/x-ndjson", 10)
    assert info.value.errors[0].field == "line 2"


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.floats(allow_nan=False) | st.text()))
def test_validation_never_raises_anything_but_invalid(features: dict[str, object]) -> None:
    try:
        validate_event(event(features=features), CHECK, NOW)
    except Invalid as exc:
        assert exc.errors, "an Invalid without reasons"
