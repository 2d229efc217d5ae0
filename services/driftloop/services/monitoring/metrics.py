from __future__ import annotations

from prometheus_client import Counter, Gauge

OUTCOMES = Counter("driftloop_outcomes_total", "Labelled predictions scored.", ["model", "correct"])
ROLLING_ACCURACY = Gauge("driftloop_rolling_accuracy", "Accuracy over the recent window.", ["model"])
DRIFTS = Counter("driftloop_drift_detected_total", "Drift events published.", ["model", "kind"])
