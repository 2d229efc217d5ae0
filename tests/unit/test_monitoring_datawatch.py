"""A model's data watch: rows counted once, the champion's predictions only, state through JSON; references
followed from registry events and read only inside the store."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import orjson

from driftloop.artifacts import LocalArtifactStore
from driftloop.bus import Record
from driftloop.config import AccuracyEstimation, DataDriftPolicy
from driftloop.contracts import ModelPromoted, ModelRolledBack, ModelVersionRegistered, utcnow
from driftloop.contracts.events import DataWindow
from driftloop.services.monitoring.datawatch import FEATURES, PREDICTIONS, DataWatch, Row, RowBatch, VersionReference
from driftloop.services.monitoring.references import References
from tests.support import feature_rows, reference_sample

POLICY = DataDriftPolicy(window=300, check_every=300)
ESTIMATION = AccuracyEstimation(window=100, level=0.95)


def _watch(rng: random.Random) -> DataWatch:
    watch = DataWatch("m", POLICY, ESTIMATION)
    watch.switch(1, VersionReference.from_sample(reference_sample(rng), POLICY))
    return watch


def test_a_shift_of_one_feature_is_found_on_that_feature_once_and_repeated_rows_count_once() -> None:
    rng = random.Random(7)
    watch = _watch(rng)
    assert watch.apply(RowBatch("m", FEATURES, 0, feature_rows(rng, range(300))), at=0.0) == []
    shifted = feature_rows(rng, range(300, 600), shift=1.5)
    found = watch.apply(RowBatch("m", FEATURES, 0, shifted), at=0.0)
    assert [(n, f.feature, f.statistic) for n, f in found] == [(600, "x", "ks")]
    assert found[0][1].p_adjusted <= POLICY.alpha and found[0][1].psi >= POLICY.min_psi
    assert watch.apply(RowBatch("m", FEATURES, 0, shifted), at=0.0) == [], "a re-sent batch is dropped by its offsets"
    assert watch.detector is not None and watch.detector.observations == 600
    # Another partition has marks of its own; the drifted feature is not reported again while it stays drifted.
    assert watch.apply(RowBatch("m", FEATURES, 1, feature_rows(rng, range(300), shift=1.5)), at=0.0) == []
    assert watch.marks == {"f:0": 599, "f:1": 299}


def test_only_the_champions_predictions_feed_the_estimate() -> None:
    rng = random.Random(8)
    watch = _watch(rng)
    rows: list[Row] = [(i, 1 if i % 2 else 2, {"@prediction": 1, "@probability": 0.9}) for i in range(300)]
    watch.apply(RowBatch("m", PREDICTIONS, 0, rows), at=0.0)
    assert watch.estimator is not None and watch.estimator.observations == 150
    estimate = watch.estimate()
    assert estimate is not None and estimate.lower <= estimate.accuracy <= estimate.upper
    assert estimate.rows == ESTIMATION.window


def test_the_state_goes_through_json_and_a_new_champion_starts_afresh() -> None:
    rng = random.Random(9)
    reference = VersionReference.from_sample(reference_sample(rng), POLICY)
    watch = DataWatch("m", POLICY, ESTIMATION)
    watch.switch(1, reference)
    watch.apply(RowBatch("m", FEATURES, 2, feature_rows(rng, range(120))), at=0.0)
    watch.apply(RowBatch("m", PREDICTIONS, 0, [(5, 1, {"@prediction": 0, "@probability": 0.7})]), at=0.0)
    data = orjson.loads(orjson.dumps(watch.to_dict()))
    again = DataWatch.from_dict(data, "m", reference, POLICY, ESTIMATION)
    assert again.to_dict() == watch.to_dict()
    assert again.marks == {"f:2": 119, "p:0": 5}
    again.switch(2, reference)
    assert again.detector is not None and again.detector.observations == 0 and again.version == 2
    again.switch(3, None)
    assert again.detector is None
    assert again.apply(RowBatch("m", FEATURES, 2, feature_rows(rng, range(120, 130))), at=0.0) == []
    assert again.marks["f:2"] == 129


def test_a_row_batch_round_trips_and_an_unknown_source_is_refused() -> None:
    batch = RowBatch("m", PREDICTIONS, 1, [(3, 2, {"@prediction": "yes", "@probability": None})])
    assert RowBatch.from_dict(orjson.loads(orjson.dumps(batch.to_dict()))) == batch
    try:
        RowBatch.from_dict({**batch.to_dict(), "s": "x"})
    except ValueError as exc:
        assert "unknown row source" in str(exc)
    else:
        raise AssertionError("an unknown source was accepted")


def _record(event: ModelVersionRegistered | ModelPromoted | ModelRolledBack, offset: int) -> Record:
    return Record("registry.events", 0, offset, event.model_name, event.model_dump_json().encode())


async def test_references_follow_the_champion_and_read_only_inside_the_store(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    uri = store.put("models/m/r1/reference.json", reference_sample(random.Random(1)).to_bytes())
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(reference_sample(random.Random(2)).to_bytes())
    now = utcnow()
    window = DataWindow(start=now - timedelta(hours=1), end=now, rows=10, train_rows=7, holdout_rows=3)
    common = {"run_id": "r1", "artifact_uri": "file:///a", "metrics": {}, "data_window": window}
    events = [
        ModelVersionRegistered(model_name="m", version=1, reference_uri=uri, **common),
        ModelVersionRegistered(model_name="m", version=2, reference_uri=outside.as_uri(), **common),
        ModelVersionRegistered(model_name="other", version=1, reference_uri=uri, **common),
        ModelPromoted(model_name="m", version=1, artifact_uri="file:///a", actor="gate", revision=1),
        ModelPromoted(model_name="m", version=2, artifact_uri="file:///a", actor="gate", revision=3),
        ModelRolledBack(
            model_name="m", from_version=2, to_version=1, artifact_uri="file:///a", actor="ops", reason="x", revision=2
        ),
    ]
    references = References({"m"}, store, POLICY)
    for offset, event in enumerate(events):
        await references.on_record(_record(event, offset), live=False)
    assert references.champion("m") == 2, "an alias change of an older revision does not win"
    assert references.champion("other") is None
    first = await references.reference("m", 1)
    assert first is not None and set(first.profile.columns) >= {"x", "y", "@prediction", "@probability"}
    assert references.cached("m", 1) is first
    assert await references.reference("m", 2) is None, "a URI outside the store is not read"
    assert await references.reference("m", 9) is None
