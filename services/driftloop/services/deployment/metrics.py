from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREDICTIONS = Counter("driftloop_predictions_total", "Predictions served.", ["model", "channel", "outcome"])
SERVING_VERSION = Gauge("driftloop_serving_version", "Model version this replica serves.", ["model"])
PUBLISH_FAILURES = Counter(
    "driftloop_prediction_publish_failures_total", "REST predictions the broker did not acknowledge.", ["model"]
)
BATCH_ROWS = Histogram(
    "driftloop_predict_batch_rows",
    "Rows per model call on the REST path (several requests when micro-batching).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 10_000),
)
QUEUED = Gauge("driftloop_predictions_queued", "REST predictions answered but not yet handed to the broker.")
