"""Input limits measured on raw bytes: depth and array lengths as a parser would find them, with no parser."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftloop.limits import (
    RECORD_HEAD_BYTES,
    JsonShape,
    TooDeep,
    TooLong,
    check_json,
    json_depth,
    json_shape,
    oversized_record,
    record_head,
)


def _shape(value: Any) -> JsonShape:
    """What the scan must find, computed on the parsed value."""
    if isinstance(value, list):
        inner = [_shape(v) for v in value]
        return JsonShape(
            1 + max((s.depth for s in inner), default=0),
            max([max(len(value), 1), *(s.longest_array for s in inner)]),
        )
    if isinstance(value, dict):
        inner = [_shape(v) for v in value.values()]
        return JsonShape(1 + max((s.depth for s in inner), default=0), max((s.longest_array for s in inner), default=0))
    return JsonShape(0, 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=40,
)


@given(json_values)
def test_the_scan_agrees_with_the_parsed_value(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        assert json_shape(text.encode(), 1000) == _shape(value)


@given(json_values, st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=8))
def test_the_check_refuses_exactly_what_the_full_scan_would(value: Any, max_depth: int, max_items: int) -> None:
    """Counting commas first (fewer than ``max_items``: only the depth is measured) changes no verdict."""
    body = json.dumps(value).encode()
    shape = json_shape(body, max_depth)
    assert json_depth(body) == _shape(value).depth
    verdict: type[Exception] | None = None
    if shape.depth > max_depth:
        verdict = TooDeep
    elif shape.longest_array > max_items:
        verdict = TooLong
    if verdict is None:
        check_json(body, max_depth=max_depth, max_items=max_items)
    else:
        with pytest.raises(verdict):
            check_json(body, max_depth=max_depth, max_items=max_items)


@given(st.text(alphabet='[]{},"\\ab', max_size=12))
def test_brackets_quotes_and_backslashes_inside_strings_do_not_count(inner: str) -> None:
    body = json.dumps({"k": [inner, inner], "n": 1}).encode()
    assert json_shape(body, 1000) == JsonShape(2, 2)


def test_a_thousand_levels_are_refused_as_too_deep_and_a_shallow_body_passes() -> None:
    deep = b'{"event_id": "e", "features": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    with pytest.raises(TooDeep, match="more than 32 levels deep") as info:
        check_json(deep, max_depth=32, max_items=10)
    assert info.value.status == 422
    check_json(b'[{"features": {"a": [1, 2]}}]', max_depth=4, max_items=10)


def test_an_array_longer_than_the_batch_limit_is_refused_wherever_it_is() -> None:
    top = json.dumps([{"i": i} for i in range(11)]).encode()
    nested = json.dumps({"instances": [{"i": i} for i in range(11)]}).encode()
    for body in (top, nested):
        with pytest.raises(TooLong, match="11 items; at most 10") as info:
            check_json(body, max_depth=32, max_items=10)
        assert info.value.status == 413
    check_json(json.dumps({"instances": list(range(10))}).encode(), max_depth=32, max_items=10)


def test_ndjson_is_measured_line_by_line() -> None:
    body = b'{"a": [1, 2, 3]}\n{"b": {"c": [1]}}\n'
    assert json_shape(body, 32) == JsonShape(3, 3)


def test_records_within_the_limit_are_kept_whole_and_larger_ones_are_named_and_cut() -> None:
    assert oversized_record(100, 100) is None
    reason = oversized_record(101, 100)
    assert reason is not None and "101 bytes" in reason and "100-byte limit" in reason
    big = bytes(range(256)) * 100
    assert record_head(big[:100], 100) == big[:100]
    assert record_head(big, 100) == big[:RECORD_HEAD_BYTES]
