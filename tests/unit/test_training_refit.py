"""The refit a version serves learns the holdout rows the gated model never saw."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from driftloop.config import ModelSpec
from driftloop.offline import TrainingRow
from driftloop.services.training.domain import fit, refit, time_split

SPEC = ModelSpec(
    name="m",
    feature_view="v",
    features=["x"],
    estimator="random_forest",
    params={"random_state": 0, "n_estimators": 20},
)


def _rows() -> list[TrainingRow]:
    """Labels 0, 1, then 0 again along x and along time: the newest third contradicts what came before."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        TrainingRow(str(i), "e", start + timedelta(seconds=i), {"x": i / 100}, int(100 <= i < 200)) for i in range(300)
    ]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_the_refit_learns_the_holdout_that_the_gated_model_never_saw() -> None:
    rows = _rows()
    train, holdout = time_split(rows, 1 / 3)
    gated = fit(SPEC, "r", train, holdout)
    served = refit(SPEC, "r", rows)
    features, labels = [r.features for r in holdout], [r.label for r in holdout]
    assert gated.metrics["accuracy"] == 0.0, "the model fitted on the training rows extrapolates the old rule"
    assert served.predict(features)[0] == labels
    assert served.run_id == "r" and served.feature_names == ["x"]
