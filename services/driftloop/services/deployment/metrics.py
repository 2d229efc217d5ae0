from __future__ import annotations

from prometheus_client import Counter, Gauge

PREDICTIONS = Counter("driftloop_predictions_total", "Predictions served.", ["model", "channel", "outcome"])
SERVING_VERSION = Gauge("driftloop_serving_version", "Model version this replica serves.", ["model"])
