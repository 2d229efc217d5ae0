"""A batch encoded from one template must be exactly what publishing each event on its own would send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftloop.bus import Bus, cloudevent_headers
from driftloop.contracts import Prediction
from driftloop.settings import DriftloopSettings

BUS = Bus(DriftloopSettings(), "deployment")
TEMPLATE = Prediction(
    event_id="p-0",
    correlation_id="c-0",
    source_event_id="e-0",
    model_name="credit",
    model_version=3,
    channel="stream",
    prediction=1,
    probability=0.5,
)

labels = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text())
times = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]))
change = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1),
        "correlation_id": st.text(min_size=1),
        "source_event_id": st.text(min_size=1),
    },
    optional={
        "causation_id": st.none() | st.text(min_size=1),
        "occurred_at": times,
        "event_time": st.none() | times,
        "entity_id": st.none() | st.text(),
        "prediction": labels,
        "probability": st.none() | st.floats(min_value=0, max_value=1),
        "label": st.none() | labels,
    },
)


@given(st.lists(change, min_size=1, max_size=20))
def test_each_record_is_byte_for_byte_what_the_model_of_its_event_gives(changes: list[dict[str, Any]]) -> None:
    keys = [c["source_event_id"] for c in changes]
    records = BUS.encode_many(TEMPLATE, changes, keys)
    for (key, value, headers, partition), fields, subject in zip(records, changes, keys, strict=True):
        event = Prediction.model_validate({**TEMPLATE.model_dump(), **fields})
        assert key == subject.encode()
        assert value == event.model_dump_json().encode()
        assert headers == cloudevent_headers(event, "driftloop/deployment", subject)
        assert partition is None
        assert Prediction.model_validate_json(value) == event


def test_a_record_without_a_key_has_no_subject_and_no_key() -> None:
    [(key, _, headers, _)] = BUS.encode_many(TEMPLATE, [{"event_id": "p-1"}], [None])
    assert key is None
    assert "ce_subject" not in dict(headers)
    assert dict(headers)["ce_id"] == b"p-1"


def test_a_field_the_contract_lacks_is_refused_not_sent() -> None:
    with pytest.raises(ValueError, match="no field.*'scroe'"):
        BUS.encode_many(TEMPLATE, [{"event_id": "p-1", "scroe": 0.9}], ["p-1"])


def test_records_sharing_a_time_share_its_encoding_and_still_carry_it() -> None:
    at = datetime(2026, 12, 4, 5, 0, tzinfo=UTC)
    records = BUS.encode_many(TEMPLATE, [{"event_id": f"p-{i}", "occurred_at": at} for i in range(3)], ["k"] * 3)
    assert {dict(headers)["ce_time"] for _, _, headers, _ in records} == {at.isoformat().encode()}
