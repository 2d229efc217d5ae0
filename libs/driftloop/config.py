"""``driftloop.yaml``: the dataset schema, feature views, models and policies.

Infrastructure lives in environment settings; this file holds what an ML
engineer reviews in a pull request, so every field is typed and validated once
at startup, and a bad file stops a service with the offending key named.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    type: Literal["float", "int", "str", "bool"]
    required: bool = True
    min: float | None = None
    max: float | None = None
    allowed: list[str | int | bool] | None = None


class LabelSpec(_Strict):
    type: Literal["float", "int", "str", "bool"] = "int"
    allowed: list[str | int | bool] | None = None


class DatasetSchema(_Strict):
    name: str
    features: dict[str, FeatureSpec]
    label: LabelSpec = LabelSpec()
    #: Events older than this (by event_time) are stale and go to the dead-letter topic.
    max_event_age: timedelta = timedelta(days=7)
    #: Producers' clocks drift; events further in the future than this are rejected.
    max_clock_skew: timedelta = timedelta(minutes=5)
    allow_unknown_features: bool = False


class EntityAggregate(_Strict):
    feature: str | None = Field(default=None, description="Numeric feature to average; None = event count.")
    agg: Literal["mean", "count"]

    @property
    def output_name(self) -> str:
        return f"entity_{self.agg}" if self.feature is None else f"entity_{self.agg}_{self.feature}"


class FeatureView(_Strict):
    name: str
    passthrough: list[str] | Literal["all"] = "all"
    entity_aggregates: list[EntityAggregate] = Field(default_factory=list)


class ModelSpec(_Strict):
    name: str
    task: Literal["classification"] = "classification"
    feature_view: str
    features: list[str]
    estimator: Literal["hist_gradient_boosting", "random_forest", "logistic_regression"] = "hist_gradient_boosting"
    params: dict[str, float | int | str | bool | None] = Field(default_factory=dict)


class DataDriftPolicy(_Strict):
    """Data drift per feature and of the predictions, against the reference sample stored with each version."""

    #: Whether data drift alone starts a training run. A covariate shift the model copes with is no reason
    #: to retrain, and a retrain on unchanged labels learns the same concept; the error stream says when it is.
    retrain: bool = False
    #: Rows of the version's training window kept as its reference (a uniform sample).
    reference_rows: int = Field(default=2000, ge=100)
    #: The current window: the latest this many values of each feature.
    window: int = Field(default=1000, ge=50)
    #: A check runs each time this many rows have arrived.
    check_every: int = Field(default=250, ge=1)
    #: False discovery rate across the features of one check (Benjamini–Hochberg).
    alpha: float = Field(default=0.01, gt=0, lt=1)
    #: The smallest population stability index that counts: a large window makes trivia significant.
    min_psi: float = Field(default=0.1, ge=0)
    #: Quantile bins of the reference for a numeric feature's PSI.
    bins: int = Field(default=10, ge=2)
    #: A numeric feature with at most this many distinct reference values is compared as categories.
    max_levels: int = Field(default=10, ge=0)


class AccuracyEstimation(_Strict):
    """Accuracy estimated from the served probabilities (CBPE) while labels are missing."""

    #: Predictions in the window the estimate is made on.
    window: int = Field(default=500, ge=10)
    #: Coverage of the interval around the estimate.
    level: float = Field(default=0.95, gt=0, lt=1)


class DriftPolicy(_Strict):
    detector: Literal["adwin"] = "adwin"
    delta: float = Field(default=0.002, gt=0, lt=1)
    #: Labelled predictions a new version must see before drift can be declared on it.
    grace_observations: int = Field(default=200, ge=1)
    #: Window of the rolling accuracy reported by monitoring.
    accuracy_window: int = Field(default=500, ge=10)
    #: Several drift events within this period give one training run.
    cooldown: timedelta = timedelta(minutes=2)
    data: DataDriftPolicy = DataDriftPolicy()
    estimation: AccuracyEstimation = AccuracyEstimation()


class TrainingPolicy(_Strict):
    min_rows: int = Field(default=300, ge=10)
    max_rows: int = Field(default=5000, ge=10)
    holdout_fraction: float = Field(default=0.3, gt=0, lt=1)
    #: How long a drift-triggered run waits for enough labelled rows of the new regime.
    wait_for_data: timedelta = timedelta(minutes=3)


class PromotionPolicy(_Strict):
    metric: Literal["accuracy", "f1", "balanced_accuracy"] = "accuracy"
    min_improvement: float = 0.0
    #: When true a version that passes the gate waits for an operator's POST .../promote.
    require_approval: bool = False


class RolloutStrategy(_Strict):
    strategy: Literal["direct"] = "direct"


class DriftloopConfig(_Strict):
    dataset: DatasetSchema
    feature_views: list[FeatureView]
    models: list[ModelSpec]
    drift: DriftPolicy = DriftPolicy()
    training: TrainingPolicy = TrainingPolicy()
    promotion: PromotionPolicy = PromotionPolicy()
    rollout: RolloutStrategy = RolloutStrategy()

    @model_validator(mode="after")
    def _references_resolve(self) -> DriftloopConfig:
        views = {v.name: v for v in self.feature_views}
        for model in self.models:
            if model.feature_view not in views:
                raise ValueError(f"model {model.name!r}: unknown feature_view {model.feature_view!r}")
            produced = set(self.view_outputs(views[model.feature_view]))
            missing = [f for f in model.features if f not in produced]
            if missing:
                raise ValueError(f"model {model.name!r}: features {missing} are not produced by its view")
        for view in self.feature_views:
            unknown = [f for f in self.passthrough(view) if f not in self.dataset.features]
            unknown += [
                a.feature for a in view.entity_aggregates if a.feature and a.feature not in self.dataset.features
            ]
            if unknown:
                raise ValueError(f"feature view {view.name!r}: unknown features {unknown}")
        return self

    def passthrough(self, view: FeatureView) -> list[str]:
        return list(self.dataset.features) if view.passthrough == "all" else view.passthrough

    def view_outputs(self, view: FeatureView) -> list[str]:
        return self.passthrough(view) + [a.output_name for a in view.entity_aggregates]

    def model(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def view(self, name: str) -> FeatureView:
        for view in self.feature_views:
            if view.name == name:
                return view
        raise KeyError(name)


def load_config(path: Path) -> DriftloopConfig:
    if not path.exists():
        raise FileNotFoundError(f"driftloop config {path} not found (set DRIFTLOOP_CONFIG)")
    return DriftloopConfig.model_validate(yaml.safe_load(path.read_text()))
