"""The hot path's compiled value check gives ``check_value``'s verdict and reason for every value and spec."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from driftloop.config import FeatureSpec, LabelSpec
from driftloop.contracts.events import FeatureValue
from driftloop.validation import ValueRule, check_value

TYPES = st.sampled_from(["float", "int", "str", "bool"])
BOUND = st.none() | st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
SCALARS = st.booleans() | st.integers(-(10**7), 10**7) | st.floats(allow_nan=True) | st.text(max_size=3)
ALLOWED = st.none() | st.lists(st.booleans() | st.integers(-3, 3) | st.text(max_size=2), max_size=4)

FEATURE_SPECS = st.builds(FeatureSpec, type=TYPES, min=BOUND, max=BOUND, allowed=ALLOWED)
LABEL_SPECS = st.builds(LabelSpec, type=TYPES, allowed=ALLOWED)


@given(FEATURE_SPECS | LABEL_SPECS, SCALARS)
def test_a_compiled_rule_says_what_check_value_says(spec: FeatureSpec | LabelSpec, value: FeatureValue) -> None:
    assert ValueRule.of(spec).problem(value) == check_value(value, spec)


def test_a_value_in_bounds_passes_and_one_past_them_is_named() -> None:
    rule = ValueRule.of(FeatureSpec(type="float", min=0, max=1))
    assert rule.problem(0.5) is None
    assert rule.problem(1) is None
    assert rule.problem(1.5) == "1.5 is above the maximum 1.0"
    assert rule.problem(float("nan")) is None, "NaN compares with no bound, as check_value lets it pass"
    assert rule.problem("0.5") == "expected float, got str '0.5'"
