"""Accuracy estimated without labels: confidence-based performance estimation (CBPE), as NannyML does it.

Deployment serves, with each prediction, the probability of the predicted
class. Calibrated on the version's holdout (``driftloop.reference``), that
probability becomes ``c``, the chance that this prediction is right; the
expected accuracy of a window is then the mean of its ``c``. Labels are not
needed, so the estimate is there the moment predictions are, and it falls
when the inputs move to where the model is unsure, which is how a covariate
shift usually hurts a model. It cannot see a change of the concept itself
(the same inputs, other labels): that is the error stream's job.

The interval around it has two sources of doubt. Given the true ``c``, the
realized accuracy of a window is a Poisson-binomial count divided by the
window's size, with variance ``sum(c * (1 - c)) / n²``. And the ``c`` are
themselves estimates from a holdout of a few hundred rows: where the window's
probabilities fall in a stretch the holdout covered thinly, the calibration
is unsure (``Calibration.variance``); after a covariate shift that is often
where they fall. The interval is the normal approximation of both at the
configured level. So "the realized accuracy falls in the interval" is a
claim that the calibration still holds, and how often it does is what
``covers`` lets monitoring count.

The estimate is only as good as two assumptions: the calibration learnt on
the holdout still holds (no concept drift), and the holdout's probabilities
span the range seen live.

>>> from driftloop.reference import Calibration
>>> estimate = estimate_accuracy([0.9] * 400, Calibration.identity(), 0.95)
>>> round(estimate.accuracy, 3), round(estimate.lower, 3), round(estimate.upper, 3)
(0.9, 0.871, 0.929)
>>> estimate.covers(0.88), estimate.covers(0.85)
(True, False)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

from driftloop.config import AccuracyEstimation
from driftloop.reference import Calibration


@dataclass(frozen=True)
class AccuracyEstimate:
    accuracy: float
    lower: float
    upper: float
    rows: int

    def covers(self, realized: float) -> bool:
        return self.lower <= realized <= self.upper

    def to_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "lower": self.lower, "upper": self.upper, "rows": float(self.rows)}


def estimate_accuracy(
    probabilities: Sequence[float] | np.ndarray, calibration: Calibration, level: float
) -> AccuracyEstimate:
    """The expected accuracy of predictions served with these probabilities, and its interval at ``level``."""
    correct = calibration.apply(probabilities)
    n = correct.size
    if n == 0:
        raise ValueError("no probabilities to estimate from")
    mean = float(correct.mean())
    variance = float(np.sum(correct * (1 - correct))) / n**2 + calibration.variance(probabilities)
    # The normal quantile as scipy.stats.norm.ppf evaluates it, without the argument checks that took half the estimate.
    spread = float(special.ndtri((1 + level) / 2)) * math.sqrt(variance)
    return AccuracyEstimate(accuracy=mean, lower=max(0.0, mean - spread), upper=min(1.0, mean + spread), rows=n)


@dataclass
class AccuracyEstimator:
    """The served probabilities of one version's latest ``window`` predictions, and the estimate over them."""

    model_name: str
    version: int
    calibration: Calibration
    policy: AccuracyEstimation
    window: deque[float] = field(default_factory=deque)
    observations: int = 0

    def __post_init__(self) -> None:
        self.window = deque(self.window, maxlen=self.policy.window)

    def update(self, probabilities: Sequence[float | None]) -> None:
        """Add served probabilities; predictions served without one (a model with no probabilities) are skipped."""
        present = [p for p in probabilities if p is not None and math.isfinite(p)]
        self.window.extend(present)
        self.observations += len(present)

    def estimate(self) -> AccuracyEstimate | None:
        """The estimate over the window once it is full; a half-empty window would give a wide, jumpy number."""
        if len(self.window) < self.policy.window:
            return None
        return estimate_accuracy(np.fromiter(self.window, dtype=float), self.calibration, self.policy.level)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "observations": self.observations,
            "window": list(self.window),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], calibration: Calibration, policy: AccuracyEstimation
    ) -> AccuracyEstimator:
        return cls(
            model_name=data["model_name"],
            version=data["version"],
            calibration=calibration,
            policy=policy,
            window=deque(data["window"]),
            observations=data["observations"],
        )
