"""The promotion gate's statistics against scikit-learn, scipy and a closed form, and its decisions."""

from __future__ import annotations

import random
import warnings
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy.stats import bootstrap
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from driftloop.config import PromotionPolicy, SliceCondition, SlicePolicy, SliceSpec
from driftloop.services.registry.gate import decide, majority_class, metric_value, paired_bootstrap, slices

SKLEARN = {
    "accuracy": accuracy_score,
    "balanced_accuracy": balanced_accuracy_score,
    "macro_f1": lambda y, p: f1_score(y, p, average="macro", zero_division=0),
}


def _noisy(labels: list[int], hit_rate: float, classes: int, rng: random.Random) -> list[int]:
    return [y if rng.random() < hit_rate else rng.randrange(classes) for y in labels]


def _pair(n: int, classes: int, ours: float, theirs: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    rng = random.Random(seed)
    labels = [rng.randrange(classes) for _ in range(n)]
    return labels, _noisy(labels, ours, classes, rng), _noisy(labels, theirs, classes, rng)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60),
    st.sampled_from(sorted(SKLEARN)),
)
def test_metrics_equal_scikit_learn(pairs: list[tuple[int, int]], metric: str) -> None:
    labels, predictions = [y for y, _ in pairs], [p for _, p in pairs]
    with warnings.catch_warnings():
        # scikit-learn warns about classes that are only predicted, which the gate handles as it does.
        warnings.simplefilter("ignore")
        expected = SKLEARN[metric](labels, predictions)
    assert metric_value(metric, labels, predictions) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "predictions"),
    [([0, 1, 1, 0, 1], [0, 1, 0, 0, 0]), ([0, 0, 0], [0, 0, 0]), ([True, False, True], [True, True, True])],
)
def test_f1_is_the_positive_class_on_binary_labels_as_the_training_metrics_report_it(
    labels: list[int], predictions: list[int]
) -> None:
    expected = f1_score(labels, predictions, zero_division=0)
    assert metric_value("f1", labels, predictions) == pytest.approx(expected)


def test_f1_is_macro_on_other_labels() -> None:
    labels, predictions = ["a", "b", "c", "a"], ["a", "b", "b", "c"]
    assert metric_value("f1", labels, predictions) == pytest.approx(f1_score(labels, predictions, average="macro"))


@pytest.mark.parametrize("metric", ["balanced_accuracy", "macro_f1"])
def test_the_bootstrap_bound_matches_scipys_paired_percentile_bootstrap(metric: str) -> None:
    labels, ours, theirs = _pair(300, 3, 0.8, 0.7, seed=5)
    bound = paired_bootstrap(metric, labels, ours, theirs, confidence=0.95, resamples=2000, seed=1)
    y, a, b = np.array(labels), np.array(ours), np.array(theirs)

    def difference(index: np.ndarray) -> float:
        return float(SKLEARN[metric](y[index], a[index]) - SKLEARN[metric](y[index], b[index]))

    reference = bootstrap(
        (np.arange(len(y)),),
        difference,
        vectorized=False,
        paired=True,
        confidence_level=0.95,
        alternative="greater",
        method="percentile",
        n_resamples=2000,
        rng=np.random.default_rng(2),
    )
    assert bound.difference == pytest.approx(difference(np.arange(len(y))))
    # Two Monte Carlo estimates of one quantile: each is off by about 0.002 here.
    assert bound.lower_bound == pytest.approx(reference.confidence_interval.low, abs=0.008)


def test_the_accuracy_bound_matches_the_normal_approximation_for_paired_proportions() -> None:
    """With many rows the bootstrap bound meets the closed form from the discordant counts (McNemar's variance)."""
    labels, ours, theirs = _pair(5000, 2, 0.85, 0.82, seed=11)
    n = len(labels)
    only_ours = sum(a == y != b for y, a, b in zip(labels, ours, theirs, strict=True))
    only_theirs = sum(b == y != a for y, a, b in zip(labels, ours, theirs, strict=True))
    difference = (only_ours - only_theirs) / n
    deviation = ((only_ours + only_theirs) / n - difference**2) ** 0.5 / n**0.5
    closed_form = difference - NormalDist().inv_cdf(0.95) * deviation
    bound = paired_bootstrap("accuracy", labels, ours, theirs, confidence=0.95, resamples=4000, seed=0)
    assert bound.difference == pytest.approx(difference)
    assert bound.lower_bound == pytest.approx(closed_form, abs=0.002)


def test_the_p_value_agrees_with_the_bound() -> None:
    """p at most 1 - confidence exactly when the bound clears the threshold, for thresholds either side of it."""
    labels, ours, theirs = _pair(300, 2, 0.85, 0.78, seed=3)
    for threshold in (0.0, 0.02, 0.04, 0.06, 0.1):
        bound = paired_bootstrap(
            "balanced_accuracy", labels, ours, theirs, confidence=0.95, resamples=2000, seed=0, threshold=threshold
        )
        if abs(bound.lower_bound - threshold) > 0.005:
            assert (bound.p_value <= 0.05) == (bound.lower_bound > threshold), threshold


def test_a_copy_of_the_champion_is_never_promoted() -> None:
    labels, ours, _ = _pair(500, 2, 0.9, 0.9, seed=1)
    decision = decide(PromotionPolicy(min_improvement=0.0), labels, ours, list(ours))
    assert not decision.passed
    assert decision.difference == 0 and decision.lower_bound == 0 and decision.p_value == 1
    assert "is not shown above 0" in decision.reason


def test_a_clearly_better_challenger_passes_with_every_number_of_the_decision() -> None:
    labels, ours, theirs = _pair(300, 2, 0.95, 0.5, seed=2)
    decision = decide(PromotionPolicy(min_improvement=0.05), labels, ours, theirs)
    assert decision.passed and decision.method == "paired_bootstrap"
    assert decision.rows == 300 and decision.excluded_rows == 0 and decision.confidence == 0.95
    assert decision.challenger == pytest.approx(balanced_accuracy_score(labels, ours))
    assert decision.champion == pytest.approx(balanced_accuracy_score(labels, theirs))
    assert decision.difference == pytest.approx(decision.challenger - decision.champion)
    assert decision.lower_bound is not None and 0.05 <= decision.lower_bound < decision.difference
    assert decision.p_value is not None and decision.p_value < 0.01
    assert decision.floor is not None and decision.floor.kind == "majority_class" and decision.floor.passed
    assert decision.floor.value == pytest.approx(0.5), "the majority class has balanced accuracy 1/classes"


def test_a_point_gain_inside_the_noise_is_rejected() -> None:
    """The old gate promoted on any +0.01; on 150 rows a gain of about two points is well inside the noise."""
    labels = [0, 1] * 75
    # Both right on 120 rows, both wrong on 13; only the challenger right on 10, only the champion on 7.
    right = [True] * 120 + [False] * 13 + [True] * 10 + [False] * 7
    theirs_right = [True] * 120 + [False] * 13 + [False] * 10 + [True] * 7
    ours = [y if hit else 1 - y for y, hit in zip(labels, right, strict=True)]
    theirs = [y if hit else 1 - y for y, hit in zip(labels, theirs_right, strict=True)]
    decision = decide(PromotionPolicy(metric="accuracy", min_improvement=0.01), labels, ours, theirs)
    assert decision.difference == pytest.approx(0.02)
    assert not decision.passed and decision.lower_bound is not None and decision.lower_bound < 0.01


def test_the_lower_bound_must_reach_min_improvement() -> None:
    labels, ours, theirs = _pair(1000, 2, 0.9, 0.8, seed=6)
    loose, strict = PromotionPolicy(min_improvement=0.02), PromotionPolicy(min_improvement=0.09)
    assert decide(loose, labels, ours, theirs).passed
    assert not decide(strict, labels, ours, theirs).passed


def test_the_decision_is_repeatable_from_its_inputs() -> None:
    labels, ours, theirs = _pair(200, 3, 0.8, 0.75, seed=8)
    assert decide(PromotionPolicy(), labels, ours, theirs) == decide(PromotionPolicy(), labels, ours, theirs)


def test_a_first_version_must_beat_the_majority_class() -> None:
    """On a 90/10 holdout always answering 0 has accuracy 0.9 but balanced accuracy 0.5: the floor sees it."""
    labels = [0] * 270 + [1] * 30
    always_zero = [0] * 300
    decision = decide(PromotionPolicy(), labels, always_zero, None)
    assert not decision.passed and decision.champion is None
    assert decision.floor is not None and decision.floor.value == 0.5 and decision.floor.lower_bound == 0
    assert "does not beat the majority class" in decision.reason
    useful = [0] * 265 + [1] * 5 + [1] * 25 + [0] * 5
    assert decide(PromotionPolicy(), labels, useful, None).passed


def test_the_floor_can_be_a_fixed_value_or_off() -> None:
    labels, ours, _ = _pair(400, 2, 0.8, 0.5, seed=9)
    assert decide(PromotionPolicy(floor=0.8), labels, ours, None).passed
    fixed = decide(PromotionPolicy(floor=0.95), labels, ours, None)
    assert not fixed.passed and fixed.floor is not None and fixed.floor.kind == "fixed" and fixed.floor.value == 0.95
    off = decide(PromotionPolicy(floor=None), labels, [0] * 400, None)
    assert off.passed and off.floor is None


def test_the_floor_also_holds_a_challenger_that_beats_a_broken_champion() -> None:
    labels, _, _ = _pair(400, 2, 0.5, 0.5, seed=10)
    flipped = [1 - y for y in labels]
    always_zero = [0] * 400
    decision = decide(PromotionPolicy(), labels, always_zero, flipped)
    assert decision.lower_bound is not None and decision.lower_bound > 0.4
    assert not decision.passed and decision.floor is not None and not decision.floor.passed


def _sliced_case() -> tuple[list[int], list[int], list[int], list[dict[str, str | int | float | bool | None]]]:
    """The challenger is far better overall but worse on colour=red."""
    rng = random.Random(12)
    labels = [rng.randrange(2) for _ in range(600)]
    colours = ["red" if i % 6 == 0 else "blue" for i in range(600)]
    ours = [y if (c == "blue" or rng.random() < 0.6) else 1 - y for y, c in zip(labels, colours, strict=True)]
    theirs = [
        y if rng.random() < (0.7 if c == "blue" else 0.9) else 1 - y for y, c in zip(labels, colours, strict=True)
    ]
    features: list[dict[str, str | int | float | bool | None]] = [
        {"colour": c, "age": 20 + i % 60} for i, c in enumerate(colours)
    ]
    return labels, ours, theirs, features


def test_a_slice_that_loses_more_than_the_margin_rejects_the_challenger() -> None:
    labels, ours, theirs, features = _sliced_case()
    decision = decide(PromotionPolicy(), labels, ours, theirs, features=features, categorical=["colour"])
    assert decision.lower_bound is not None and decision.lower_bound > 0.1, "better overall"
    assert not decision.passed and "colour=red" in decision.reason
    by_name = {s.name: s for s in decision.slices}
    assert set(by_name) == {"colour=blue", "colour=red"}
    assert by_name["colour=red"].rows == 100 and by_name["colour=red"].difference < -0.05
    assert not by_name["colour=red"].passed and by_name["colour=blue"].passed
    assert decision.slice_margin == 0.05 and decision.min_slice_rows == 30


def test_a_slice_below_the_minimum_size_is_reported_but_does_not_decide() -> None:
    labels, ours, theirs, features = _sliced_case()
    policy = PromotionPolicy(slices=SlicePolicy(min_rows=101))
    decision = decide(policy, labels, ours, theirs, features=features, categorical=["colour"])
    red = next(s for s in decision.slices if s.name == "colour=red")
    assert decision.passed and not red.decided and red.passed and red.difference < -0.05


def test_defined_slices_and_per_value_features_from_the_policy_are_checked() -> None:
    labels, ours, theirs, features = _sliced_case()
    policy = PromotionPolicy(
        slices=SlicePolicy(
            per_value_of=["colour"],
            defined=[SliceSpec(name="young", where={"age": SliceCondition(max=40)})],
        )
    )
    decision = decide(policy, labels, ours, theirs, features=features)
    assert [s.name for s in decision.slices] == ["colour=blue", "colour=red", "young"]
    assert decision.slices[2].rows == sum(1 for f in features if int(f["age"] or 0) < 40)  # type: ignore[arg-type]
    assert not decision.passed


def test_slice_conditions_select_values_and_ranges() -> None:
    rows: list[dict[str, str | int | float | bool | None]] = [
        {"c": "a", "x": 1},
        {"c": "b", "x": 5},
        {"c": "a", "x": 9},
        {"c": None, "x": None},
    ]
    specs = [
        SliceSpec(name="a", where={"c": SliceCondition(values=["a"])}),
        SliceSpec(name="mid-a", where={"c": SliceCondition(values=["a"]), "x": SliceCondition(min=1, max=9)}),
        SliceSpec(name="x>=5", where={"x": SliceCondition(min=5)}),
    ]
    assert slices(rows, ["c"], specs) == [
        ("c=a", [0, 2]),
        ("c=b", [1]),
        ("a", [0, 2]),
        ("mid-a", [0]),
        ("x>=5", [1, 2]),
    ]


def test_too_few_rows_outside_the_champions_window_cannot_decide() -> None:
    labels, ours, theirs = _pair(20, 2, 1.0, 0.0, seed=13)
    decision = decide(PromotionPolicy(), labels, ours, theirs, excluded_rows=100)
    assert not decision.passed and decision.rows == 20 and decision.excluded_rows == 100
    assert "only 20 holdout rows" in decision.reason
    empty = decide(PromotionPolicy(), [], [], [], excluded_rows=120)
    assert not empty.passed and empty.rows == 0


def test_majority_class_breaks_ties_by_first_seen() -> None:
    assert majority_class(["b", "a", "a", "b"]) == "b"


def test_policy_rejects_a_slice_condition_that_says_nothing_and_a_negative_improvement() -> None:
    with pytest.raises(ValidationError, match="values, min or max"):
        SliceCondition()
    with pytest.raises(ValidationError):
        PromotionPolicy(min_improvement=-0.01)
