"""A model's history for the dashboard: points every so many outcomes, bounded, one axis, through JSON."""

from __future__ import annotations

import random

import orjson

from driftloop.config import AccuracyEstimation, DataDriftPolicy, DriftPolicy
from driftloop.services.monitoring.datawatch import FEATURES, PREDICTIONS, DataWatch, Row, RowBatch, VersionReference
from driftloop.services.monitoring.domain import ModelTrack
from driftloop.services.monitoring.estimation import AccuracyEstimate
from driftloop.services.monitoring.history import (
    KEPT_CHECKS,
    KEPT_DATA_DRIFTS,
    KEPT_POINTS,
    DataHistory,
    EstimatedPoint,
    RealizedPoint,
    RealizedSeries,
    merge_accuracy,
)
from driftloop.services.monitoring.join import Outcome
from tests.support import feature_rows, reference_sample

POLICY = DataDriftPolicy(window=200, check_every=200)
ESTIMATION = AccuracyEstimation(window=100, level=0.95)
TRACKED = DriftPolicy(grace_observations=200, accuracy_window=100)


def _outcomes(version: int, count: int, error: float, start: int, rng: random.Random) -> list[Outcome]:
    return [
        Outcome("m", version, rng.random() >= error, float(i), f"e{i}", (0, i, 0)) for i in range(start, start + count)
    ]


def test_the_track_takes_a_point_per_every_outcomes_of_the_current_version_and_keeps_it_through_json() -> None:
    rng = random.Random(1)
    track = ModelTrack("m", TRACKED)
    taken = []
    for batch_start in range(0, 400, 40):
        for outcome in _outcomes(1, 40, 0.1, batch_start, rng):
            track.apply(outcome)
        taken.append(track.sample(at=float(batch_start)))
    # 40 outcomes a batch, a point once 50 have passed since the last: after 80, 160, 240, 320, 400 outcomes.
    assert [p.observations for p in track.realized.points] == [80, 160, 240, 320, 400]
    assert taken.count(True) == 5
    assert all(p.version == 1 and 0.7 < p.accuracy < 1.0 for p in track.realized.points)

    for outcome in _outcomes(2, 60, 0.0, 400, rng):
        track.apply(outcome)
    assert track.sample(at=500.0)
    assert (track.realized.points[-1].version, track.realized.points[-1].observations) == (2, 60)
    assert track.realized.points[-1].accuracy == 1.0

    stored = orjson.loads(orjson.dumps(track.to_dict()))
    again = ModelTrack.from_dict(stored, "m", TRACKED)
    assert again.realized == track.realized


def test_a_track_stored_before_the_history_reads_back_with_an_empty_one() -> None:
    track = ModelTrack("m", TRACKED)
    stored = {key: value for key, value in track.to_dict().items() if key != "realized"}
    assert ModelTrack.from_dict(stored, "m", TRACKED).realized.points == RealizedSeries().points


def test_a_series_keeps_its_latest_points_only() -> None:
    series = RealizedSeries(every=1)
    for n in range(1, KEPT_POINTS + 51):
        assert series.offer(float(n), 1, n, 0.5)
    assert len(series.points) == KEPT_POINTS
    assert series.points[0].observations == 51 and series.points[-1].observations == KEPT_POINTS + 50
    assert not series.offer(0.0, 1, KEPT_POINTS + 60, None), "no accuracy yet, no point"


def test_every_check_is_kept_with_each_columns_verdict_and_the_history_outlives_a_new_champion() -> None:
    rng = random.Random(2)
    reference = VersionReference.from_sample(reference_sample(rng, 0.6), POLICY)
    watch = DataWatch("m", POLICY, ESTIMATION)
    watch.switch(1, reference)
    watch.apply(RowBatch("m", FEATURES, 0, feature_rows(rng, range(200))), at=10.0)
    watch.apply(RowBatch("m", FEATURES, 0, feature_rows(rng, range(200, 400), shift=2.0)), at=20.0)
    checks = list(watch.history.checks)
    assert [(c.at, c.version, c.observations) for c in checks] == [(10.0, 1, 200), (20.0, 1, 400)]
    verdicts = [{r.feature: r.drifted for r in c.columns} for c in checks]
    assert verdicts == [{"x": False, "y": False}, {"x": True, "y": False}]
    shifted = {r.feature: r for r in checks[1].columns}["x"]
    assert shifted.statistic == "ks" and shifted.p_adjusted <= POLICY.alpha and shifted.psi >= POLICY.min_psi

    rows: list[Row] = [(i, 1, {"@prediction": 1, "@probability": 0.9}) for i in range(250)]
    watch.apply(RowBatch("m", PREDICTIONS, 0, rows[:150]), at=30.0)
    watch.apply(RowBatch("m", PREDICTIONS, 0, rows[150:]), at=40.0)
    # The estimate exists once its window (100) is full; then a point per 50 predictions.
    assert [(p.at, p.observations) for p in watch.history.estimates] == [(30.0, 150), (40.0, 250)]
    assert all(p.lower <= p.accuracy <= p.upper for p in watch.history.estimates)

    kept = list(watch.history.checks)
    assert len(kept) == 3, "the predictions' rows are checked too"
    watch.switch(2, reference)
    assert list(watch.history.checks) == kept, "a new champion starts new windows, not a new history"
    data = orjson.loads(orjson.dumps(watch.to_dict()))
    again = DataWatch.from_dict(data, "m", reference, POLICY, ESTIMATION)
    assert again.history == watch.history


def test_checks_and_data_drifts_are_bounded() -> None:
    history = DataHistory()
    for n in range(KEPT_CHECKS + 5):
        history.record_check(float(n), 1, n, [])
    for n in range(KEPT_DATA_DRIFTS + 5):
        history.keep_drift({"event_id": str(n)})
    assert len(history.checks) == KEPT_CHECKS and history.checks[0].observations == 5
    assert len(history.drifts) == KEPT_DATA_DRIFTS and history.drifts[0]["event_id"] == "5"


def test_an_estimate_point_needs_an_estimate_and_enough_new_predictions() -> None:
    history = DataHistory(every=10)
    estimate = AccuracyEstimate(0.8, 0.7, 0.9, 100)
    assert not history.offer_estimate(1.0, 1, 100, None)
    assert history.offer_estimate(1.0, 1, 100, estimate)
    assert not history.offer_estimate(2.0, 1, 105, estimate)
    assert history.offer_estimate(3.0, 2, 10, estimate), "a new version counts from its own start"


def test_the_merged_series_is_in_time_order_and_joins_points_taken_together() -> None:
    merged = merge_accuracy(
        [RealizedPoint(3.0, 1, 100, 0.9), RealizedPoint(1.0, 1, 50, 0.95)],
        [EstimatedPoint(3.0, 1, 200, 0.85, 0.8, 0.9), EstimatedPoint(2.0, 1, 150, 0.88, 0.83, 0.93)],
    )
    assert [(p.at, p.realized, p.estimated, p.lower, p.upper) for p in merged] == [
        (1.0, 0.95, None, None, None),
        (2.0, None, 0.88, 0.83, 0.93),
        (3.0, 0.9, 0.85, 0.8, 0.9),
    ]
