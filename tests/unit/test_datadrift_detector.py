"""The data-drift detector on synthetic streams: it names the feature that moved, and only that one."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from driftloop.config import DataDriftPolicy
from driftloop.contracts.events import FeatureValue
from driftloop.reference import ReferenceSample
from driftloop.services.monitoring.datadrift import (
    PREDICTION,
    PROBABILITY,
    CategoricalProfile,
    DataDriftDetector,
    NumericProfile,
    ReferenceProfile,
)

Row = dict[str, FeatureValue]
COLOURS = ["red", "green", "blue"]


def rows(rng: np.random.Generator, n: int, **shift: float) -> list[Row]:
    """Rows of a small loan-like world; ``shift`` moves one column (a mean, or a colour's share)."""
    salary = rng.normal(50_000 + shift.get("salary", 0.0), 15_000, n)
    age = rng.integers(18, 80, n)
    elevel = rng.integers(0, 5, n)
    loan = rng.lognormal(11 + shift.get("loan", 0.0), 0.5, n)
    red = 0.5 + shift.get("colour", 0.0)
    colour = rng.choice(COLOURS, size=n, p=[red, (1 - red) / 2, (1 - red) / 2])
    score = salary / 100_000 - 0.3 + rng.normal(0, 0.2, n) + shift.get("score", 0.0)
    probability = np.clip(0.5 + np.abs(score), 0.5, 1.0)
    return [
        {
            "salary": float(salary[i]),
            "age": int(age[i]),
            "elevel": int(elevel[i]),
            "loan": float(loan[i]),
            "colour": str(colour[i]),
            PREDICTION: int(score[i] > 0),
            PROBABILITY: float(probability[i]),
        }
        for i in range(n)
    ]


def sample(rng: np.random.Generator, n: int = 2000) -> ReferenceSample:
    reference = rows(rng, n)
    names = ["salary", "age", "elevel", "loan", "colour"]
    return ReferenceSample(
        model_name="m",
        run_id="r",
        features={name: [r[name] for r in reference] for name in names},
        predictions=[r[PREDICTION] for r in reference[:600]],  # type: ignore[misc]
        probabilities=[r[PROBABILITY] for r in reference[:600]],  # type: ignore[misc]
        window_rows=n,
    )


def detector(rng: np.random.Generator, policy: DataDriftPolicy | None = None) -> DataDriftDetector:
    policy = policy or DataDriftPolicy()
    return DataDriftDetector("m", 1, ReferenceProfile.from_sample(sample(rng), policy), policy)


def test_columns_are_compared_by_their_kind() -> None:
    profile = detector(np.random.default_rng(0)).reference
    kinds = {name: type(p) for name, p in profile.columns.items()}
    assert kinds == {
        "salary": NumericProfile,
        "age": NumericProfile,
        "elevel": CategoricalProfile,  # five levels: compared as categories, not as a staircase of ties
        "loan": NumericProfile,
        "colour": CategoricalProfile,
        PREDICTION: CategoricalProfile,
        PROBABILITY: NumericProfile,
    }
    assert profile.rows["salary"] == 2000 and profile.rows[PREDICTION] == 600


def test_a_stationary_stream_of_100k_rows_gives_no_finding_at_default_settings() -> None:
    rng = np.random.default_rng(11)
    watcher = detector(rng)
    checks = []
    for _ in range(20):
        checks += watcher.update(rows(rng, 5000))
    assert watcher.observations == 100_000
    assert len(checks) == 100_000 // DataDriftPolicy().check_every
    assert [f.feature for c in checks for f in c.findings] == []
    tested = {r.feature for r in checks[-1].results}
    assert tested == {"salary", "age", "elevel", "loan", "colour", PREDICTION, PROBABILITY}
    assert max(r.psi for c in checks for r in c.results) < DataDriftPolicy().min_psi


@pytest.mark.parametrize(
    ("shift", "feature"),
    [
        ({"loan": 0.4}, "loan"),
        ({"colour": 0.2}, "colour"),
    ],
)
def test_a_covariate_shift_of_one_feature_names_exactly_that_feature(shift: dict[str, float], feature: str) -> None:
    rng = np.random.default_rng(3)
    watcher = detector(rng)
    before = watcher.update(rows(rng, 3000))
    after = watcher.update(rows(rng, 3000, **shift))
    assert [f.feature for c in before for f in c.findings] == []
    findings = [f for c in after for f in c.findings]
    assert [f.feature for f in findings] == [feature], "named once, at the first check that sees it"
    finding = findings[0]
    assert finding.p_adjusted <= DataDriftPolicy().alpha and finding.psi >= DataDriftPolicy().min_psi
    assert finding.statistic == ("ks" if feature == "loan" else "chi2")
    evidence = finding.evidence()
    assert set(evidence) == {
        finding.statistic,
        "p_value",
        "p_adjusted",
        "psi",
        "wasserstein" if feature == "loan" else "jensen_shannon",
        "reference_rows",
        "window_rows",
    }
    assert evidence["window_rows"] == DataDriftPolicy().window and evidence["reference_rows"] == 2000


def test_a_shift_of_the_predictions_is_found_on_the_prediction_columns() -> None:
    rng = np.random.default_rng(5)
    watcher = detector(rng)
    watcher.update(rows(rng, 2000))
    moved = {f.feature for c in watcher.update(rows(rng, 2000, score=0.4)) for f in c.findings}
    assert moved == {PREDICTION, PROBABILITY}


def test_values_the_reference_never_held_count_as_drift() -> None:
    rng = np.random.default_rng(8)
    watcher = detector(rng)
    stream = rows(rng, 2000)
    for row in stream[1000:]:
        if rng.random() < 0.2:
            row["colour"] = "purple"
    found = [f.feature for c in watcher.update(stream) for f in c.findings]
    assert found == ["colour"]


def test_a_large_window_does_not_flag_a_trivial_shift_that_the_effect_size_floor_rules_out() -> None:
    rng = np.random.default_rng(2)
    reference = ReferenceSample("m", "r", {"x": rng.normal(0, 1, 20_000).tolist()})

    def run(policy: DataDriftPolicy) -> list[Any]:
        watcher = DataDriftDetector("m", 1, ReferenceProfile.from_sample(reference, policy), policy)
        return [c for c in watcher.update([{"x": float(v)} for v in rng.normal(0.08, 1, 20_000)])]

    floor = DataDriftPolicy(reference_rows=20_000, window=20_000, check_every=20_000)
    [check] = run(floor)
    assert check.results[0].p_adjusted < 1e-6, "with 20,000 rows a shift of 0.08 sd is significant"
    assert check.results[0].psi < floor.min_psi and check.findings == []
    [check] = run(floor.model_copy(update={"min_psi": 0.0}))
    assert [f.feature for f in check.findings] == ["x"]


def test_benjamini_hochberg_keeps_a_borderline_p_value_among_many_features_from_counting() -> None:
    rng = np.random.default_rng(4)
    names = [f"f{i}" for i in range(20)]
    reference = ReferenceSample("m", "r", {n: rng.normal(0, 1, 2000).tolist() for n in names})
    stream = [{n: float(rng.normal(0.13 if n == "f0" else 0.0, 1)) for n in names} for _ in range(1000)]
    policy = DataDriftPolicy(min_psi=0.0, alpha=0.01)

    def last_check(columns: list[str]) -> Any:
        alone = ReferenceSample("m", "r", {n: reference.features[n] for n in columns})
        watcher = DataDriftDetector("m", 1, ReferenceProfile.from_sample(alone, policy), policy)
        return watcher.update([{n: row[n] for n in columns} for row in stream])[-1]

    among_twenty = last_check(names)
    f0 = next(r for r in among_twenty.results if r.feature == "f0")
    assert f0.p_value < policy.alpha < f0.p_adjusted, "significant alone, not among twenty"
    assert among_twenty.findings == []
    assert [f.feature for f in last_check(["f0"]).findings] == ["f0"]


def test_a_drifted_feature_is_reported_once_and_again_only_after_it_recovered() -> None:
    rng = np.random.default_rng(6)
    policy = DataDriftPolicy(window=500, check_every=250)
    watcher = detector(rng, policy)

    def found(stream: list[Row]) -> list[str]:
        return [f.feature for c in watcher.update(stream) for f in c.findings]

    assert found(rows(rng, 1000)) == []
    assert found(rows(rng, 2000, loan=0.5)) == ["loan"]
    assert found(rows(rng, 2000)) == []
    assert "loan" not in watcher.flagged
    assert found(rows(rng, 1000, loan=0.5)) == ["loan"]


def test_state_survives_a_json_round_trip_and_the_restored_detector_continues_identically() -> None:
    rng = np.random.default_rng(9)
    policy = DataDriftPolicy()
    original = detector(rng, policy)
    original.update(rows(rng, 1300, loan=0.5))
    restored = DataDriftDetector.from_dict(json.loads(json.dumps(original.to_dict())), original.reference, policy)
    assert restored.to_dict() == original.to_dict()
    more = rows(rng, 700, loan=0.5)

    def summary(checks: list[Any]) -> list[tuple[int, list[tuple[str, float, bool]]]]:
        return [(c.observations, [(r.feature, r.p_value, r.drifted) for r in c.results]) for c in checks]

    assert summary(restored.update(more)) == summary(original.update(more))


def test_missing_and_non_numeric_values_leave_a_numeric_window_alone() -> None:
    rng = np.random.default_rng(10)
    watcher = detector(rng)
    watcher.update([{"salary": None}, {"salary": float("nan")}, {"salary": "oops"}, {}, {"salary": 1.0}])
    assert list(watcher.windows["salary"]) == [1.0]
    assert watcher.observations == 5


@pytest.mark.parametrize("batch", [1, 97, 250, 1000])
def test_checks_fall_every_check_every_rows_whatever_the_batch_size(batch: int) -> None:
    rng = np.random.default_rng(12)
    watcher = detector(rng)
    data = rows(rng, 3000)
    checks = []
    for start in range(0, len(data), batch):
        checks += watcher.update(data[start : start + batch])
    assert [c.observations for c in checks] == list(range(250, 3001, 250))
    assert [len(c.results) for c in checks] == [0, 0, 0] + [7] * 9, "columns are tested once their window is full"


def test_probabilities_are_compared_at_two_decimals_so_a_surer_fit_of_the_same_recipe_is_no_drift() -> None:
    """A model sure of its rows serves 0.9993 from one fit and 0.99996 from another: below the second decimal
    the two are the same answer, yet quantile bins on the digits beyond tell them apart at once."""
    rng = np.random.default_rng(4)
    policy = DataDriftPolicy(window=500, check_every=500)
    sample = ReferenceSample(
        "m", "r", {}, predictions=[1] * 2000, probabilities=rng.uniform(0.999, 0.9995, 2000).tolist()
    )
    detector = DataDriftDetector("m", 1, ReferenceProfile.from_sample(sample, policy), policy)
    live = [{PREDICTION: 1, PROBABILITY: float(p)} for p in rng.uniform(0.9996, 0.99999, 1000)]
    assert [f.feature for check in detector.update(live) for f in check.findings] == []
    unsure = [{PREDICTION: 1, PROBABILITY: float(p)} for p in rng.uniform(0.6, 0.9, 500)]
    assert [f.feature for check in detector.update(unsure) for f in check.findings] == [PROBABILITY]
