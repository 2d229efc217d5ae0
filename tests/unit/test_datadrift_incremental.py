"""The detector's windows keep, per value, what a check needs; its checks must report exactly what the
straightforward computation (``tests.datadrift_oracle``: every window read afresh at every check) reports.

Random streams with ties, missing and malformed values, categories the reference never held, numbers and
strings that share a level, rows of one source at a time, and windows that slide across many checks.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from driftloop.config import DataDriftPolicy
from driftloop.contracts.events import FeatureValue
from driftloop.reference import ReferenceSample
from driftloop.services.monitoring.datadrift import (
    PREDICTION,
    PROBABILITY,
    CategoricalProfile,
    DataDriftCheck,
    DataDriftDetector,
    ReferenceProfile,
    ReferenceSteps,
    _numbers,
    chi2_pvalues,
    ks_pvalues,
    wasserstein,
)
from tests.datadrift_oracle import StraightDetector, ks_and_wasserstein, level, number

Row = dict[str, FeatureValue]
FEATURES = ("x", "k", "n", "c")
COLOURS = ["red", "green", "blue", "1.0"]
#: What a malformed or unusual value can be: each reaches a column of any kind.
ODD: list[FeatureValue] = [None, float("nan"), float("inf"), -float("inf"), "oops", True, False, -0.0, 0.0, 2**70]
ODD += ["purple", "2.0", "-0.0", 1, 7.0, 0.5]

some_values = st.lists(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(),
        st.sampled_from([0.0, -0.0, 1.0, 2.0, 3.5]),
        st.sampled_from(["1.0", "-0.0", "0.0", "1", "red", "True", "nan", "inf", "1e+20"]),
        st.text(max_size=3),
    ),
    max_size=40,
)


@given(some_values)
def test_a_batch_of_numbers_is_what_number_makes_of_each_value(values: list[FeatureValue]) -> None:
    expected = [n for n in map(number, values) if n is not None]
    assert [v.hex() for v in _numbers(values).tolist()] == [v.hex() for v in expected]


@given(
    st.lists(st.sampled_from(["1.0", "-0.0", "0.0", "2.0", "1", "red", "True", "1e+20", "nan"]), min_size=1),
    some_values,
)
def test_a_batch_of_levels_and_codes_is_what_level_makes_of_each_value(
    reference: list[str], values: list[FeatureValue]
) -> None:
    profile = CategoricalProfile.build("c", reference)
    levels = [x for x in map(level, values) if x is not None]
    found, codes = profile.encode(values)
    assert found == levels
    assert codes.tolist() == [profile.levels.get(x, len(profile.levels)) for x in levels]


samples = st.sampled_from(["continuous", "rounded", "integers", "few"])


def draw(rng: np.random.Generator, kind: str, size: int, shift: float = 0.0) -> np.ndarray:
    if kind == "continuous":
        return rng.normal(shift, 1, size)
    if kind == "rounded":
        return np.round(rng.normal(shift, 1, size), 1)
    if kind == "integers":
        return np.asarray(rng.integers(0, 30, size) + np.round(shift * 5))
    return np.asarray(rng.integers(0, 3, size) + np.round(shift))


@settings(max_examples=200, deadline=None)
@given(samples, samples, st.integers(1, 400), st.integers(1, 400), st.floats(-1, 1), st.integers(0, 2**32 - 1))
def test_the_ks_statistic_from_positions_is_the_pooled_comparisons_to_the_bit(
    reference_kind: str, window_kind: str, n: int, m: int, shift: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    reference = np.sort(draw(rng, reference_kind, n))
    window = draw(rng, window_kind, m, shift)
    steps = ReferenceSteps.of(reference)
    ks, distance = ks_and_wasserstein(reference, window)
    assert steps.ks(steps.positions(window)) == ks
    assert wasserstein(reference, np.sort(window)) == pytest.approx(distance, rel=1e-9, abs=1e-12)
    assert wasserstein(reference, np.sort(window)) == pytest.approx(stats.wasserstein_distance(reference, window))


@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 5000), st.integers(50, 5000)), min_size=1, max_size=8))
def test_ks_p_values_are_scipys_to_the_bit(cases: list[tuple[int, int, int]]) -> None:
    statistics = np.asarray([k / 2000 for k, _, _ in cases])
    n, m = np.asarray([c[1] for c in cases], dtype=float), np.asarray([c[2] for c in cases], dtype=float)
    expected = stats.kstwo.sf(statistics, np.round(n * m / (n + m)))
    assert ks_pvalues(statistics, n, m).tolist() == np.atleast_1d(expected).tolist()


@given(st.lists(st.tuples(st.floats(0, 500), st.integers(0, 30)), min_size=1, max_size=8))
def test_chi2_p_values_are_scipys_to_the_bit(cases: list[tuple[float, int]]) -> None:
    statistics, dof = np.asarray([c[0] for c in cases]), np.asarray([c[1] for c in cases], dtype=float)
    expected = np.where(dof > 0, stats.chi2.sf(statistics, np.maximum(dof, 1)), 1.0)
    assert chi2_pvalues(statistics, dof).tolist() == expected.tolist()


def reference(rng: np.random.Generator, size: int, x_kind: str) -> ReferenceSample:
    """Four features (continuous or tied numbers, numbers with many ties, five numeric levels, colours) and
    the predictions."""
    n = rng.integers(0, 5, size).astype(float)
    n[rng.random(size) < 0.05] = -0.0
    return ReferenceSample(
        model_name="m",
        run_id="r",
        features={
            "x": draw(rng, x_kind, size).tolist(),
            "k": draw(rng, "integers", size).tolist(),
            "n": n.tolist(),
            "c": rng.choice(COLOURS, size).tolist(),
        },
        predictions=rng.integers(0, 2, size).tolist(),
        probabilities=rng.uniform(0.5, 1.0, size).tolist(),
    )


def stream(rng: np.random.Generator, size: int, x_kind: str, mess: float, shift: float) -> list[Row]:
    """Rows of one source each, as monitoring gets them: feature rows and prediction rows, some of both; with
    ``mess`` odd values and missing columns, and the second half shifted."""
    rows: list[Row] = []
    for i in range(size):
        moved = shift if i >= size // 2 else 0.0
        features: Row = {
            "x": float(draw(rng, x_kind, 1, moved)[0]),
            "k": int(draw(rng, "integers", 1, moved)[0]),
            "n": int(rng.integers(0, 5)) + (1 if moved and rng.random() < moved else 0),
            "c": str(rng.choice(COLOURS, p=[0.4 + moved / 2, 0.3 - moved / 4, 0.2 - moved / 4, 0.1])),
        }
        predictions: Row = {PREDICTION: int(rng.random() < 0.5 + moved / 2), PROBABILITY: float(rng.uniform(0.5, 1))}
        row = {**features, **predictions} if rng.random() < 0.2 else features if i % 2 else predictions
        for name in list(row):
            if rng.random() < mess:
                if rng.random() < 0.3:
                    del row[name]
                else:
                    row[name] = ODD[int(rng.integers(len(ODD)))]
        rows.append(row)
    return rows


def batches(rng: np.random.Generator, rows: list[Row], largest: int) -> list[list[Row]]:
    cuts = np.cumsum(rng.integers(1, largest + 1, len(rows)))
    return [rows[a:b] for a, b in zip([0, *cuts.tolist()], cuts.tolist(), strict=False) if a < len(rows)]


def assert_same(found: list[DataDriftCheck], expected: list[DataDriftCheck]) -> None:
    assert [c.observations for c in found] == [c.observations for c in expected]
    for check, peer in zip(found, expected, strict=True):
        assert [f.feature for f in check.findings] == [f.feature for f in peer.findings]
        assert len(check.results) == len(peer.results)
        for result, straight in zip(check.results, peer.results, strict=True):
            exact = ("feature", "statistic", "value", "p_value", "p_adjusted", "psi", "reference_rows", "window_rows")
            assert {k: getattr(result, k) for k in (*exact, "drifted")} == {
                k: getattr(straight, k) for k in (*exact, "drifted")
            }
            assert result.distance_name == straight.distance_name
            assert result.distance == pytest.approx(straight.distance, rel=1e-9, abs=1e-12)


policies = st.builds(
    DataDriftPolicy,
    window=st.integers(50, 150),
    check_every=st.integers(5, 80),
    alpha=st.sampled_from([0.01, 0.2, 0.5]),
    min_psi=st.sampled_from([0.0, 0.05, 0.1]),
    bins=st.sampled_from([2, 5, 10]),
)
streams = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "x_kind": st.sampled_from(["continuous", "rounded"]),
        "reference_rows": st.integers(100, 600),
        "rows": st.integers(100, 700),
        "mess": st.sampled_from([0.0, 0.02, 0.2]),
        "shift": st.sampled_from([0.0, 0.3, 0.6]),
        "largest_batch": st.sampled_from([1, 20, 300]),
    }
)


@settings(max_examples=40, deadline=None)
@given(policies, streams)
def test_every_check_reports_what_the_straightforward_computation_reports(
    policy: DataDriftPolicy, spec: dict[str, Any]
) -> None:
    rng = np.random.default_rng(spec["seed"])
    profile = ReferenceProfile.from_sample(reference(rng, spec["reference_rows"], spec["x_kind"]), policy)
    detector, straight = DataDriftDetector("m", 1, profile, policy), StraightDetector(profile, policy)
    rows = stream(rng, spec["rows"], spec["x_kind"], spec["mess"], spec["shift"])
    for batch in batches(rng, rows, spec["largest_batch"]):
        assert_same(detector.update(batch), straight.update(batch))
    assert detector.to_dict()["windows"] == {name: list(window) for name, window in straight.windows.items()}
    assert detector.flagged == straight.flagged


@settings(max_examples=25, deadline=None)
@given(policies, streams, st.floats(0, 1))
def test_a_detector_read_back_from_json_continues_exactly_where_it_was(
    policy: DataDriftPolicy, spec: dict[str, Any], stop: float
) -> None:
    rng = np.random.default_rng(spec["seed"])
    profile = ReferenceProfile.from_sample(reference(rng, spec["reference_rows"], spec["x_kind"]), policy)
    rows = stream(rng, spec["rows"], spec["x_kind"], spec["mess"], spec["shift"])
    split = int(stop * len(rows))
    running = DataDriftDetector("m", 1, profile, policy)
    running.update(rows[:split])
    restored = DataDriftDetector.from_dict(json.loads(json.dumps(running.to_dict())), profile, policy)
    assert restored.to_dict() == running.to_dict()
    rest = batches(rng, rows[split:], spec["largest_batch"])
    after = [c for batch in rest for c in restored.update(batch)]
    assert after == [c for batch in rest for c in running.update(batch)], "to the bit, distances included"


@settings(max_examples=25, deadline=None)
@given(policies, streams, st.floats(0, 1))
def test_a_state_stored_by_the_previous_version_loads_and_continues_as_that_version_would(
    policy: DataDriftPolicy, spec: dict[str, Any], stop: float
) -> None:
    """Stored states live in a changelog-backed table; a stack upgraded in place reads what the previous
    version (the straightforward detector) wrote: its windows as plain values."""
    rng = np.random.default_rng(spec["seed"])
    profile = ReferenceProfile.from_sample(reference(rng, spec["reference_rows"], spec["x_kind"]), policy)
    rows = stream(rng, spec["rows"], spec["x_kind"], spec["mess"], spec["shift"])
    split = int(stop * len(rows))
    straight = StraightDetector(profile, policy)
    straight.update(rows[:split])
    stored = {
        "model_name": "m",
        "version": 1,
        "observations": straight.observations,
        "since_check": straight.since_check,
        "flagged": sorted(straight.flagged),
        "windows": {name: list(window) for name, window in straight.windows.items()},
    }
    detector = DataDriftDetector.from_dict(json.loads(json.dumps(stored)), profile, policy)
    assert detector.to_dict() == stored
    for batch in batches(rng, rows[split:], spec["largest_batch"]):
        assert_same(detector.update(batch), straight.update(batch))
