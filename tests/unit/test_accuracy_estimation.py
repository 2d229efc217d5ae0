"""CBPE: the estimated accuracy holds the realized one within its interval, and falls when a shift hurts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.isotonic import IsotonicRegression

from driftloop.config import AccuracyEstimation
from driftloop.reference import Calibration
from driftloop.services.monitoring.estimation import AccuracyEstimator, estimate_accuracy

WEIGHTS = np.array([1.5, -1.0])
WINDOW = 500


def served(
    rng: np.random.Generator, n: int, scale: float = 2.0, overconfident: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities served with ``n`` predictions and whether each was right.

    The model is the true one, so its top-class probability is exactly the
    chance it is right; ``overconfident`` serves that probability pushed
    towards 1, as an over-fitted model would. A smaller ``scale`` moves the
    inputs towards the decision boundary: a covariate shift that hurts.
    """
    x = rng.normal(0, scale, (n, 2))
    positive = 1 / (1 + np.exp(-(x @ WEIGHTS)))
    confidence = np.maximum(positive, 1 - positive)
    correct = rng.random(n) < confidence
    return (confidence**0.25 if overconfident else confidence), correct


def coverage(rng: np.random.Generator, calibration: Calibration, windows: int, **world: float | bool) -> float:
    hits = 0
    for _ in range(windows):
        probabilities, correct = served(rng, WINDOW, **world)  # type: ignore[arg-type]
        hits += estimate_accuracy(probabilities, calibration, 0.95).covers(float(correct.mean()))
    return hits / windows


def test_on_a_stationary_stream_with_calibrated_probabilities_the_interval_holds_the_realized_accuracy() -> None:
    rng = np.random.default_rng(0)
    assert coverage(rng, Calibration.identity(), 400) >= 0.90


def test_isotonic_calibration_on_the_holdout_repairs_overconfident_probabilities() -> None:
    rng = np.random.default_rng(1)
    holdout_probabilities, holdout_correct = served(rng, 1000, overconfident=True)
    calibration = Calibration.fit(holdout_probabilities.tolist(), holdout_correct.tolist())
    assert coverage(rng, calibration, 400, overconfident=True) >= 0.90
    assert coverage(rng, Calibration.identity(), 400, overconfident=True) < 0.10, "uncalibrated, it is too sure"


def test_after_a_covariate_shift_that_hurts_the_model_the_estimate_drops_with_the_realized_accuracy() -> None:
    rng = np.random.default_rng(2)
    holdout_probabilities, holdout_correct = served(rng, 1000)
    calibration = Calibration.fit(holdout_probabilities.tolist(), holdout_correct.tolist())
    before_p, before_correct = served(rng, 2000)
    after_p, after_correct = served(rng, 2000, scale=0.5)
    before = estimate_accuracy(before_p, calibration, 0.95)
    after = estimate_accuracy(after_p, calibration, 0.95)
    assert after.upper < before.lower, "the drop is beyond both intervals"
    assert before.accuracy - after.accuracy > 0.1
    assert float(before_correct.mean() - after_correct.mean()) > 0.1
    assert after.covers(float(after_correct.mean())), "the concept is unchanged, so the estimate still tracks it"


def test_the_stored_calibration_predicts_what_sklearn_isotonic_regression_predicts() -> None:
    rng = np.random.default_rng(3)
    probabilities, correct = served(rng, 800, overconfident=True)
    fitted = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(probabilities, correct)
    stored = Calibration.from_dict(json.loads(json.dumps(Calibration.fit(probabilities, correct).to_dict())))
    grid = np.linspace(0.3, 1.0, 301)
    np.testing.assert_allclose(stored.apply(grid), fitted.predict(grid), atol=1e-12)


def test_the_interval_narrows_with_the_window_and_stays_within_zero_and_one() -> None:
    narrow = estimate_accuracy(np.full(4000, 0.8), Calibration.identity(), 0.95)
    wide = estimate_accuracy(np.full(100, 0.8), Calibration.identity(), 0.95)
    assert narrow.upper - narrow.lower < wide.upper - wide.lower
    assert (wide.upper - wide.lower) == pytest.approx(2 * 1.959964 * np.sqrt(0.8 * 0.2 / 100), rel=1e-5)
    certain = estimate_accuracy(np.full(50, 1.0), Calibration.identity(), 0.95)
    assert (certain.lower, certain.accuracy, certain.upper) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        estimate_accuracy(np.array([]), Calibration.identity(), 0.95)


def test_the_estimator_waits_for_a_full_window_skips_missing_probabilities_and_survives_json() -> None:
    policy = AccuracyEstimation(window=100)
    estimator = AccuracyEstimator("m", 3, Calibration.identity(), policy)
    estimator.update([0.9] * 60 + [None, float("nan")])
    assert estimator.estimate() is None and estimator.observations == 60
    estimator.update([0.7] * 80)
    estimate = estimator.estimate()
    assert estimate is not None and estimate.rows == 100
    assert estimate.accuracy == pytest.approx((20 * 0.9 + 80 * 0.7) / 100)
    restored = AccuracyEstimator.from_dict(json.loads(json.dumps(estimator.to_dict())), Calibration.identity(), policy)
    assert restored.to_dict() == estimator.to_dict() and restored.estimate() == estimate


def test_the_interval_is_wider_where_the_holdout_was_thin() -> None:
    rng = np.random.default_rng(4)
    probabilities, correct = served(rng, 1000)
    calibration = Calibration.fit(probabilities, correct)
    thin = np.full(500, probabilities.min())  # the bottom block pools few holdout rows
    thick = np.full(500, probabilities.max())
    assert calibration.block_rows[0] < calibration.block_rows[-1]
    assert calibration.variance(thin) > calibration.variance(thick) > 0
    assert Calibration.identity().variance(thin) == 0.0
    assert sum(calibration.block_rows) == 1000


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95, 0.99, 0.999])
def test_the_interval_is_the_normal_quantile_scipy_stats_gives_to_the_bit(level: float) -> None:
    rng = np.random.default_rng(3)
    probabilities, correct = served(rng, WINDOW)
    calibration = Calibration.fit(probabilities, correct)
    estimate = estimate_accuracy(probabilities, calibration, level)
    values = calibration.apply(probabilities)
    variance = float(np.sum(values * (1 - values))) / values.size**2 + calibration.variance(probabilities)
    spread = float(stats.norm.ppf((1 + level) / 2)) * math.sqrt(variance)
    assert (estimate.lower, estimate.upper) == (
        max(0.0, estimate.accuracy - spread),
        min(1.0, estimate.accuracy + spread),
    )
