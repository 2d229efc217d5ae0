"""The promotion gate: challenger against champion on the same holdout rows, with no I/O.

The comparison is a paired bootstrap of the metric's difference rather than
McNemar's test. McNemar counts the rows one model gets right and the other
wrong, which answers "is accuracy different?"; the gate's default metrics
(balanced accuracy, macro F1) weigh rows by their class and are not sums of
per-row hits, and ``min_improvement`` is written in the metric's own units. A
bootstrap that resamples holdout rows, scoring both models on each resample,
keeps the pairing (both models see the same rows, so the noise they share
cancels) and gives the lower confidence bound of the difference in those
units for any of the metrics. The resamples come from a fixed seed, so one
holdout and two sets of predictions always give the same decision, and a
redelivered run is decided the same way.

A challenger passes when that bound reaches ``min_improvement`` and is above
zero (a challenger must be shown better, not merely not worse, so a copy of
the champion never passes), when it beats the quality floor (by default the
majority-class predictor on the same rows, for a first version too), and when
no slice with enough rows loses more than the slice margin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from driftloop.config import PromotionPolicy, SliceCondition, SliceSpec
from driftloop.contracts.events import FeatureValue, FloorCheck, GateDecision, LabelValue, SliceResult

METHOD = "paired_bootstrap"

Counts = NDArray[np.float64]
MetricFn = Callable[[Counts, Counts, Counts], NDArray[np.float64]]


def outside_window(event_time: datetime | None, start: datetime | None, end: datetime | None) -> bool:
    """Whether a holdout row lies outside the window a champion trained on (so it never saw the row).

    A row without a time comes from a holdout written before rows carried one and is kept.

    >>> from datetime import datetime, UTC
    >>> t = lambda h: datetime(2026, 1, 1, h, tzinfo=UTC)
    >>> [outside_window(t(h), t(2), t(4)) for h in (1, 2, 3, 4, 5)]
    [True, False, False, False, True]
    >>> outside_window(None, t(2), t(4)), outside_window(t(3), None, None)
    (True, True)
    """
    if event_time is None or start is None or end is None:
        return True
    return not start <= event_time <= end


class _Encoded:
    """Labels and every side's predictions as class indices, with the one-hot matrices the metrics sum."""

    def __init__(self, labels: Sequence[LabelValue], predictions: Sequence[Sequence[LabelValue]]) -> None:
        classes: dict[LabelValue, int] = {}
        for value in [*labels, *(p for side in predictions for p in side)]:
            classes.setdefault(value, len(classes))
        self.classes = classes
        self.n = len(labels)
        eye = np.eye(len(classes))
        self.truth = eye[[classes[v] for v in labels]]
        self.sides = [eye[[classes[v] for v in side]] for side in predictions]

    def metric(self, name: str) -> MetricFn:
        """The metric as a function of per-class sums (support, predicted, hits) over rows, batched."""
        if name == "accuracy":
            return _accuracy
        if name == "balanced_accuracy":
            return _balanced_accuracy
        if name == "macro_f1":
            return _macro_f1
        if name == "f1":
            # The rule of ``driftloop.modeling.score``: on 0/1 labels F1 is the positive class's, else macro.
            if set(self.classes) <= {0, 1}:
                positive = self.classes.get(1)
                return lambda support, predicted, hits: _binary_f1(support, predicted, hits, positive)
            return _macro_f1
        raise ValueError(f"unknown metric {name!r}")

    def sums(self, weights: Counts, side: int) -> tuple[Counts, Counts, Counts]:
        """Per-class support, predictions and hits of one side, for each row of ``weights`` (rows' counts)."""
        predicted = self.sides[side]
        return weights @ self.truth, weights @ predicted, weights @ (self.truth * predicted)


def _ratio(numerator: Counts, denominator: Counts) -> Counts:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _accuracy(support: Counts, predicted: Counts, hits: Counts) -> NDArray[np.float64]:
    return _ratio(hits.sum(axis=-1), support.sum(axis=-1))


def _balanced_accuracy(support: Counts, predicted: Counts, hits: Counts) -> NDArray[np.float64]:
    """Mean recall over the classes present, as scikit-learn's ``balanced_accuracy_score``."""
    present = support > 0
    return _ratio(_ratio(hits, support).sum(axis=-1), present.sum(axis=-1).astype(float))


def _macro_f1(support: Counts, predicted: Counts, hits: Counts) -> NDArray[np.float64]:
    """Mean F1 over the classes that are true or predicted, as ``f1_score(average="macro")``."""
    both = support + predicted
    return _ratio(_ratio(2 * hits, both).sum(axis=-1), (both > 0).sum(axis=-1).astype(float))


def _binary_f1(support: Counts, predicted: Counts, hits: Counts, positive: int | None) -> NDArray[np.float64]:
    """F1 of the class 1; with no 1 among labels and predictions it is 0, as scikit-learn's ``zero_division=0``."""
    if positive is None:
        return np.zeros(support.shape[:-1])
    return _ratio(2 * hits[..., positive], support[..., positive] + predicted[..., positive])


def metric_value(name: str, labels: Sequence[LabelValue], predictions: Sequence[LabelValue]) -> float:
    """One metric of one model, computed the way the gate computes it on every resample.

    >>> metric_value("balanced_accuracy", [0, 0, 0, 1], [0, 0, 0, 0])
    0.5
    >>> metric_value("accuracy", [0, 0, 0, 1], [0, 0, 0, 0])
    0.75
    """
    encoded = _Encoded(labels, [predictions])
    return float(encoded.metric(name)(*encoded.sums(np.ones((1, encoded.n)), 0))[0])


@dataclass(frozen=True)
class Bound:
    """A difference of one metric (first side minus second, or minus a constant) and its bootstrap evidence."""

    difference: float
    lower_bound: float
    p_value: float


def paired_bootstrap(
    metric: str,
    labels: Sequence[LabelValue],
    first: Sequence[LabelValue],
    second: Sequence[LabelValue] | float,
    *,
    confidence: float,
    resamples: int,
    seed: int,
    threshold: float = 0.0,
) -> Bound:
    """The metric of ``first`` minus that of ``second`` (predictions of the same rows, or a constant).

    Every resample draws ``n`` of the holdout rows with replacement and scores
    both sides on the same draw. The lower bound is the one-sided percentile
    bound at ``confidence``; the p-value, of the hypothesis that the
    difference is at most ``threshold``, is the share of resampled
    differences at or below it (with the usual +1 so it is never zero).

    >>> b = paired_bootstrap("accuracy", [1] * 50 + [0] * 50, [1] * 50 + [0] * 50, [0] * 100,
    ...                      confidence=0.95, resamples=1000, seed=0)
    >>> b.difference, 0.4 < b.lower_bound < 0.5, b.p_value < 0.01
    (0.5, True, True)
    """
    sides = [first] if isinstance(second, float) else [first, second]
    encoded = _Encoded(labels, sides)
    fn = encoded.metric(metric)
    rng = np.random.default_rng(seed)
    weights = np.vstack(
        [np.ones(encoded.n), rng.multinomial(encoded.n, np.full(encoded.n, 1 / encoded.n), size=resamples)]
    ).astype(float)
    values = fn(*encoded.sums(weights, 0))
    differences = values - (second if isinstance(second, float) else fn(*encoded.sums(weights, 1)))
    observed, resampled = float(differences[0]), differences[1:]
    return Bound(
        difference=observed,
        lower_bound=float(np.quantile(resampled, 1 - confidence)),
        p_value=float((np.count_nonzero(resampled <= threshold) + 1) / (resamples + 1)),
    )


def majority_class(labels: Sequence[LabelValue]) -> LabelValue:
    """The most frequent label; a tie goes to the one seen first.

    >>> majority_class([0, 1, 1, 0, 1])
    1
    """
    counts: dict[LabelValue, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts, key=lambda label: counts[label])


def _matches(value: FeatureValue, condition: SliceCondition) -> bool:
    if value is None:
        return False
    if condition.values is not None and value not in condition.values:
        return False
    if condition.min is None and condition.max is None:
        return True
    if isinstance(value, str):
        return False
    return (condition.min is None or value >= condition.min) and (condition.max is None or value < condition.max)


def slices(
    features: Sequence[Mapping[str, FeatureValue]], per_value_of: Sequence[str], defined: Sequence[SliceSpec]
) -> list[tuple[str, list[int]]]:
    """Row indices of each slice: one per value of each ``per_value_of`` feature, then each defined slice.

    >>> rows = [{"colour": "red", "age": 30}, {"colour": "blue", "age": 50}, {"colour": "red", "age": 70}]
    >>> spec = SliceSpec(name="over-40", where={"age": SliceCondition(min=40)})
    >>> slices(rows, ["colour"], [spec])
    [('colour=blue', [1]), ('colour=red', [0, 2]), ('over-40', [1, 2])]
    """
    found: list[tuple[str, list[int]]] = []
    for feature in dict.fromkeys(per_value_of):
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(features):
            if (value := row.get(feature)) is not None:
                groups.setdefault(f"{feature}={value}", []).append(i)
        found += sorted(groups.items())
    for spec in defined:
        members = [i for i, row in enumerate(features) if all(_matches(row.get(f), c) for f, c in spec.where.items())]
        found.append((spec.name, members))
    return found


def _slice_results(
    policy: PromotionPolicy,
    labels: Sequence[LabelValue],
    challenger: Sequence[LabelValue],
    champion: Sequence[LabelValue],
    groups: Sequence[tuple[str, list[int]]],
) -> list[SliceResult]:
    results = []
    for name, members in groups:
        if not members:
            continue
        truth = [labels[i] for i in members]
        ours = metric_value(policy.metric, truth, [challenger[i] for i in members])
        theirs = metric_value(policy.metric, truth, [champion[i] for i in members])
        decided = len(members) >= policy.slices.min_rows
        results.append(
            SliceResult(
                name=name,
                rows=len(members),
                challenger=ours,
                champion=theirs,
                difference=ours - theirs,
                decided=decided,
                passed=not decided or ours - theirs >= -policy.slices.margin,
            )
        )
    return results


def _floor(
    policy: PromotionPolicy, labels: Sequence[LabelValue], challenger: Sequence[LabelValue]
) -> FloorCheck | None:
    if policy.floor is None:
        return None
    majority = policy.floor == "majority_class"
    baseline: list[LabelValue] | float = [majority_class(labels)] * len(labels) if majority else float(policy.floor)
    bound = paired_bootstrap(
        policy.metric,
        labels,
        challenger,
        baseline,
        confidence=policy.confidence,
        resamples=policy.resamples,
        seed=policy.seed,
    )
    return FloorCheck(
        kind="majority_class" if majority else "fixed",
        value=metric_value(policy.metric, labels, baseline) if isinstance(baseline, list) else baseline,
        difference=bound.difference,
        lower_bound=bound.lower_bound,
        passed=bound.lower_bound > 0 if majority else bound.lower_bound >= 0,
    )


def decide(
    policy: PromotionPolicy,
    labels: Sequence[LabelValue],
    challenger: Sequence[LabelValue],
    champion: Sequence[LabelValue] | None,
    *,
    features: Sequence[Mapping[str, FeatureValue]] = (),
    categorical: Sequence[str] = (),
    excluded_rows: int = 0,
) -> GateDecision:
    """The gate's decision on predictions of the same holdout rows (``champion`` is None for a first version).

    ``features`` are the holdout rows' features, for the slices: one per value
    of each ``categorical`` feature and of ``policy.slices.per_value_of``, and
    each slice ``policy.slices`` defines.

    >>> labels = [0, 1] * 100
    >>> decide(PromotionPolicy(), labels, labels, [0] * 200).passed
    True
    >>> decide(PromotionPolicy(), labels, labels, labels).reason
    'balanced_accuracy +0.0000 (lower bound +0.0000 at 95%, p=1) is not shown above 0.01; beats the majority ...'
    """
    n = len(labels)
    common = {
        "metric": policy.metric,
        "min_improvement": policy.min_improvement,
        "method": METHOD,
        "confidence": policy.confidence,
        "rows": n,
        "excluded_rows": excluded_rows,
    }
    if n < policy.min_holdout_rows:
        return GateDecision(
            **common,
            challenger=metric_value(policy.metric, labels, challenger) if n else 0.0,
            champion=None,
            passed=False,
            reason=f"only {n} holdout rows to score ({excluded_rows} left out: the champion trained on them); "
            f"at least {policy.min_holdout_rows} are needed to decide",
        )
    ours = metric_value(policy.metric, labels, challenger)
    floor = _floor(policy, labels, challenger)
    floor_note = "" if floor is None else _floor_note(policy.metric, floor)
    if champion is None:
        passed = floor is None or floor.passed
        return GateDecision(
            **common,
            challenger=ours,
            champion=None,
            passed=passed,
            reason=f"no champion yet; {floor_note}" if floor else "no champion yet; no floor configured",
            floor=floor,
        )
    bound = paired_bootstrap(
        policy.metric,
        labels,
        challenger,
        champion,
        confidence=policy.confidence,
        resamples=policy.resamples,
        seed=policy.seed,
        threshold=policy.min_improvement,
    )
    groups = slices(features, [*categorical, *policy.slices.per_value_of], policy.slices.defined) if features else []
    results = _slice_results(policy, labels, challenger, champion, groups)
    better = bound.lower_bound >= policy.min_improvement and bound.lower_bound > 0
    losing = [s for s in results if not s.passed]
    passed = better and (floor is None or floor.passed) and not losing
    level = f"{policy.confidence:.0%}"
    comparison = (
        f"{policy.metric} {bound.difference:+.4f} (lower bound {bound.lower_bound:+.4f} at {level}, "
        f"p={bound.p_value:.2g}) {'reaches' if better else 'is not shown above'} {policy.min_improvement:g}"
    )
    notes = [comparison]
    if floor is not None:
        notes.append(floor_note)
    if losing:
        worst = ", ".join(f"{s.name} {s.difference:+.3f} on {s.rows} rows" for s in losing)
        notes.append(f"slices losing more than {policy.slices.margin:g}: {worst}")
    elif results:
        notes.append(f"{sum(s.decided for s in results)} slices within {policy.slices.margin:g}")
    return GateDecision(
        **common,
        challenger=ours,
        champion=metric_value(policy.metric, labels, champion),
        passed=passed,
        reason="; ".join(notes),
        difference=bound.difference,
        lower_bound=bound.lower_bound,
        p_value=bound.p_value,
        floor=floor,
        slice_margin=policy.slices.margin,
        min_slice_rows=policy.slices.min_rows,
        slices=results,
    )


def _floor_note(metric: str, floor: FloorCheck) -> str:
    beaten = "beats" if floor.passed else "does not beat"
    what = "the majority class" if floor.kind == "majority_class" else "the fixed floor"
    return f"{beaten} {what} ({metric} {floor.value:.4f}, lower bound of the margin {floor.lower_bound:+.4f})"
