from __future__ import annotations

from prometheus_client import Counter, Gauge

OUTCOMES = Counter("driftloop_outcomes_total", "Labelled predictions scored.", ["model", "correct"])
ROLLING_ACCURACY = Gauge("driftloop_rolling_accuracy", "Accuracy over the recent window.", ["model"])
DRIFTS = Counter("driftloop_drift_detected_total", "Drift events published.", ["model", "kind"])
PENDING_JOINS = Gauge("driftloop_pending_joins", "Join entries (predictions, labels, scored marks) held here.")
EXPIRED_JOINS = Counter("driftloop_pending_joins_expired_total", "Join entries dropped past the label horizon.")
UNRESOLVED = Gauge(
    "driftloop_drift_unresolved",
    "1 while the current version's drift was not resolved by a new version (failed run, rejected challenger).",
    ["model"],
)
ESTIMATED_ACCURACY = Gauge(
    "driftloop_estimated_accuracy", "Accuracy of the champion estimated from served probabilities (CBPE).", ["model"]
)
ESTIMATED_LOWER = Gauge("driftloop_estimated_accuracy_lower", "Lower bound of the estimated accuracy.", ["model"])
ESTIMATED_UPPER = Gauge("driftloop_estimated_accuracy_upper", "Upper bound of the estimated accuracy.", ["model"])
