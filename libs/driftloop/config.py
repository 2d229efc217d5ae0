"""``driftloop.yaml``: the dataset schema, feature views, models and policies.

Infrastructure lives in environment settings; this file holds what an ML
engineer reviews in a pull request, so every field is typed and validated once
at startup, and a bad file stops a service with the offending key named.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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

    def fingerprint(self) -> str:
        """SHA-256 of what a row of the dataset is (features, their types and bounds, the label).

        Freshness limits are left out: they say which events are accepted, not what a row holds.
        """
        shape = self.model_dump(mode="json", include={"features", "label", "allow_unknown_features"})
        return hashlib.sha256(json.dumps(shape, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def categorical(self) -> list[str]:
        """Features whose values name groups rather than amounts: the gate checks each of their values."""
        return [name for name, spec in self.features.items() if spec.type in ("str", "bool") or spec.allowed]


class EntityAggregate(_Strict):
    feature: str | None = Field(default=None, description="Numeric feature to average; None = event count.")
    agg: Literal["mean", "count"]

    @cached_property
    def output_name(self) -> str:
        """Kept once made: the features service names every event's aggregates with it."""
        return f"entity_{self.agg}" if self.feature is None else f"entity_{self.agg}_{self.feature}"


class FeatureView(_Strict):
    name: str
    passthrough: list[str] | Literal["all"] = "all"
    entity_aggregates: list[EntityAggregate] = Field(default_factory=list)


RolloutStrategyName = Literal["direct", "shadow", "canary", "blue_green", "ab"]


class CanaryStep(_Strict):
    """One stage of a canary: the challenger's share of traffic and what it must show before the next."""

    percent: float = Field(gt=0, le=100)
    #: Unset: the rollout's ``min_duration``.
    min_duration: timedelta | None = None
    #: Unset: the rollout's ``min_outcomes``.
    min_outcomes: int | None = Field(default=None, ge=1)


class RolloutPolicy(_Strict):
    """How a promoted version takes over from the champion, and the online verdict that may stop it.

    Declared once at the top level and, per model, as ``models[].rollout``: the
    fields a model sets override the top-level ones, so the top level also holds
    the defaults of strategies it does not use itself. ``direct`` swaps the
    version in at once, as before staged rollouts, and ignores everything else.
    """

    strategy: RolloutStrategyName = "direct"
    #: Canary stages; a bare number is a percent with the rollout's duration and outcomes. The challenger
    #: takes all traffic after the last stage below 100, so a final 100 only says so.
    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(percent=p) for p in (5, 25, 50, 100)], min_length=1
    )
    #: How long each stage (the shadow phase, the blue-green watch) lasts at least.
    min_duration: timedelta = timedelta(minutes=2)
    #: Labelled outcomes each side must have within a stage before it can end.
    min_outcomes: int = Field(default=200, ge=1)
    #: A/B: the challenger's percent of traffic, held until ``budget`` labelled outcomes (both sides) are in.
    split: float = Field(default=50, gt=0, lt=100)
    #: 6,000 at an even split shows two equal error rates of 10 % within a 0.02 margin in 80 % of tests.
    budget: int = Field(default=6000, ge=2)
    #: Non-inferiority margin: how much higher the challenger's error rate may be than the champion's.
    margin: float = Field(default=0.02, gt=0, lt=1)
    #: Probability, over the whole rollout however often it is looked at, of a wrong verdict.
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    #: Abort when the challenger's own error rate is clearly above this; null: no ceiling.
    max_error_rate: float | None = Field(default=None, gt=0, lt=1)
    #: Abort when the challenger's 99th-percentile latency exceeds this many milliseconds; null: no ceiling.
    max_p99_ms: float | None = Field(default=None, gt=0)

    @field_validator("steps", mode="before")
    @classmethod
    def _bare_percents(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"percent": v} if isinstance(v, int | float) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("steps")
    @classmethod
    def _steps_climb(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        percents = [s.percent for s in steps]
        if any(b <= a for a, b in itertools.pairwise(percents)):
            raise ValueError(f"percents must increase from stage to stage, got {percents}")
        if percents[0] == 100:
            raise ValueError("needs a stage below 100 percent: at 100 nothing is left to compare with")
        return steps


class ModelSpec(_Strict):
    name: str
    task: Literal["classification"] = "classification"
    feature_view: str
    features: list[str]
    estimator: Literal["hist_gradient_boosting", "random_forest", "logistic_regression"] = "hist_gradient_boosting"
    params: dict[str, float | int | str | bool | None] = Field(default_factory=dict)
    #: Overrides of the top-level ``rollout`` for this model, field by field.
    rollout: RolloutPolicy | None = None


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


class CusumPolicy(_Strict):
    """A one-sided Bernoulli CUSUM on the error stream (``monitoring/cusum.py`` says how each is used)."""

    #: Mean labelled outcomes between false alarms on a stationary stream: at 10⁸ a false alarm within 10⁶
    #: outcomes has a 1 % chance, less with the margin ``reference_se`` adds.
    arl: float = Field(default=1e8, gt=1)
    #: The rise of the error rate worth a retrain, in points of error rate (0.05: five points of accuracy).
    rise: float = Field(default=0.05, gt=0, lt=1)
    #: Standard errors the reference error rate is taken above its estimate, so an estimate that came out
    #: low does not make the stationary stream look like a rise.
    reference_se: float = Field(default=2.0, gt=0)
    #: Up to this many of a version's first outcomes (those the statistic had settled back to zero on) make
    #: its reference error rate; detection starts after ``grace_observations`` of them, against the reference
    #: as it stands. The more, the narrower the margin ``reference_se`` puts on it.
    reference: int = Field(default=10_000, ge=1)


class DriftPolicy(_Strict):
    #: The concept-drift detector on the error stream: ``cusum`` (see ``cusum``) or River's ADWIN (``delta``).
    detector: Literal["cusum", "adwin"] = "adwin"
    #: ADWIN's confidence: a smaller delta is slower and raises fewer false alarms.
    delta: float = Field(default=0.002, gt=0, lt=1)
    cusum: CusumPolicy = CusumPolicy()
    #: Labelled predictions a new version must see before drift can be declared on it.
    grace_observations: int = Field(default=200, ge=1)
    #: Window of the rolling accuracy reported by monitoring.
    accuracy_window: int = Field(default=500, ge=10)
    #: Several drift events within this period give one training run.
    cooldown: timedelta = timedelta(minutes=2)
    data: DataDriftPolicy = DataDriftPolicy()
    estimation: AccuracyEstimation = AccuracyEstimation()

    @model_validator(mode="after")
    def _reference_covers_grace(self) -> DriftPolicy:
        if self.cusum.reference < self.grace_observations:
            raise ValueError(
                f"cusum.reference ({self.cusum.reference}) must be at least grace_observations "
                f"({self.grace_observations}): detection starts once the grace period is in the reference"
            )
        return self


class TrainingPolicy(_Strict):
    min_rows: int = Field(default=300, ge=10)
    max_rows: int = Field(default=5000, ge=10)
    holdout_fraction: float = Field(default=0.3, gt=0, lt=1)
    #: How long a drift-triggered run waits for enough labelled rows of the new regime.
    wait_for_data: timedelta = timedelta(minutes=3)
    #: After fitting on the training rows (the model the gate judges), fit once more on the whole
    #: window, holdout included; a version that passes the gate serves that refit.
    refit: bool = True


class SliceCondition(_Strict):
    """One feature's part of a slice: a set of values, or a range ``min <= value < max``."""

    values: list[str | int | float | bool] | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _says_something(self) -> SliceCondition:
        if self.values is None and self.min is None and self.max is None:
            raise ValueError("a slice condition needs values, min or max")
        return self


class SliceSpec(_Strict):
    name: str = Field(min_length=1)
    #: Every condition must hold for a row to be in the slice.
    where: dict[str, SliceCondition] = Field(min_length=1)


class SlicePolicy(_Strict):
    #: A slice whose metric falls by more than this (challenger against champion) rejects the challenger.
    margin: float = Field(default=0.05, ge=0)
    #: Slices with fewer holdout rows are reported but do not decide: a handful of rows is noise.
    min_rows: int = Field(default=30, ge=1)
    #: Features sliced per value besides the categorical ones (``str``/``bool`` or with ``allowed`` values).
    per_value_of: list[str] = Field(default_factory=list)
    defined: list[SliceSpec] = Field(default_factory=list)


class PromotionPolicy(_Strict):
    #: ``balanced_accuracy`` and ``macro_f1`` weigh every class alike, so a model that only learns the
    #: majority class cannot win on an imbalanced holdout; ``f1`` is the positive class's F1 on 0/1 labels.
    metric: Literal["accuracy", "f1", "balanced_accuracy", "macro_f1"] = "balanced_accuracy"
    #: The lower confidence bound of the challenger's improvement over the champion must reach this
    #: (and be above zero). With 0 two equally good models trained on different samples are told
    #: apart on a 300-row holdout in about 7 % of trials, since one of them is a little better;
    #: 0.01 keeps that at 3 % (``tests/bench/bench_gate.py``).
    min_improvement: float = Field(default=0.01, ge=0)
    #: When true a version that passes the gate waits for an approver's POST .../approve (or .../reject).
    require_approval: bool = False
    #: How long a version waits for a person (ISO-8601, e.g. PT4H); null waits for ever.
    approval_timeout: timedelta | None = None
    #: Past the timeout: the registry rejects the version itself ("approval timed out"), or it escalates
    #: once (log, audit row, metric) and the version keeps waiting.
    on_approval_timeout: Literal["reject", "escalate"] = "reject"
    #: One-sided confidence of the bounds the gate compares.
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    #: Bootstrap resamples of the holdout; the seed makes a decision repeatable from its inputs.
    resamples: int = Field(default=2000, ge=200)
    seed: int = 0
    #: Fewer holdout rows (after dropping those the champion trained on) cannot support a decision.
    min_holdout_rows: int = Field(default=30, ge=1)
    #: What a version must beat even with no champion: the majority-class predictor on the same
    #: holdout, a fixed value of the metric, or nothing (``null``).
    floor: Literal["majority_class"] | float | None = "majority_class"
    slices: SlicePolicy = SlicePolicy()


class DriftloopConfig(_Strict):
    dataset: DatasetSchema
    feature_views: list[FeatureView]
    models: list[ModelSpec]
    drift: DriftPolicy = DriftPolicy()
    training: TrainingPolicy = TrainingPolicy()
    promotion: PromotionPolicy = PromotionPolicy()
    rollout: RolloutPolicy = RolloutPolicy()

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
        produced = {name for view in self.feature_views for name in self.view_outputs(view)}
        slices = self.promotion.slices
        sliced = [*slices.per_value_of, *(name for spec in slices.defined for name in spec.where)]
        if unknown := sorted(set(sliced) - produced):
            raise ValueError(f"promotion.slices: features {unknown} are not produced by any feature view")
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

    def rollout_for(self, name: str) -> RolloutPolicy:
        """The model's rollout: the top-level one with the fields the model sets itself replaced; a model
        the file does not declare (a run registered by hand) rolls out as the top level says."""
        spec = next((m for m in self.models if m.name == name), None)
        own = spec.rollout if spec is not None else None
        if own is None:
            return self.rollout
        return RolloutPolicy.model_validate(
            {**self.rollout.model_dump(), **own.model_dump(include=set(own.model_fields_set))}
        )

    def view(self, name: str) -> FeatureView:
        for view in self.feature_views:
            if view.name == name:
                return view
        raise KeyError(name)


def load_config(path: Path) -> DriftloopConfig:
    if not path.exists():
        raise FileNotFoundError(f"driftloop config {path} not found (set DRIFTLOOP_CONFIG)")
    return DriftloopConfig.model_validate(yaml.safe_load(path.read_text()))
