"""Payloads of every topic.

Event types are named and versioned (``io.driftloop.<noun>.<verb>.v1``): a
breaking change is a new type, never an edit in place, and the compatibility
check in ``driftloop.contracts.compat`` holds the committed schemas to that.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, TypeAdapter

from driftloop.contracts.envelope import Contract, Envelope, ProducerContract

FeatureValue = bool | int | float | str | None
LabelValue = bool | int | float | str
Features = dict[str, FeatureValue]
Metrics = dict[str, float]


def _artifact_sha256() -> Any:
    """The optional checksum field of every event that carries an artifact URI."""
    return Field(
        default=None,
        description="SHA-256 of the artifact's bytes (64 lowercase hex digits), recorded when the version is "
        "registered; every load checks it and refuses a mismatch. Absent on events from before checksums existed.",
    )


class DataEvent(ProducerContract):
    """What a producer writes to ``events.raw`` (key = ``entity_id``)."""

    EVENT_TYPE: ClassVar[str] = "io.driftloop.data.event.v1"

    event_id: str = Field(min_length=1, description="Idempotency key: a re-sent event is not counted twice.")
    entity_id: str = Field(min_length=1)
    event_time: datetime
    features: Features
    label: LabelValue | None = None


class LabelEvent(ProducerContract):
    """A label that arrives after its event, on ``labels`` (key = ``event_id``)."""

    EVENT_TYPE: ClassVar[str] = "io.driftloop.label.v1"

    event_id: str = Field(min_length=1)
    label: LabelValue
    label_time: datetime | None = None


class _Typed(Envelope):
    """Takes ``EVENT_TYPE`` from the ``event_type`` literal so the name is written once."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        default = cls.model_fields["event_type"].default
        if isinstance(default, str):
            cls.EVENT_TYPE = default


class FieldError(Contract):
    EVENT_TYPE: ClassVar[str] = "io.driftloop.field_error.v1"

    field: str = Field(description="Dotted path of the offending field, e.g. features.age.")
    message: str


class EventValidated(_Typed):
    """A producer event that passed the contract and the dataset schema; ``event_id`` is kept."""

    event_type: Literal["io.driftloop.event.validated.v1"] = "io.driftloop.event.validated.v1"
    entity_id: str
    event_time: datetime
    features: Features
    label: LabelValue | None = None


class DeadLetter(_Typed):
    """A record no consumer could use, kept whole with the reason so nothing is lost silently."""

    event_type: Literal["io.driftloop.deadletter.v1"] = "io.driftloop.deadletter.v1"
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    payload: str = Field(description="The original record value, decoded as UTF-8 with escapes.")
    payload_truncated: bool = Field(
        default=False, description="Only the head of an oversized value is kept; the whole one stays at its offset."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="The original record's headers, so a replay carries its event id."
    )
    reason: str
    errors: list[FieldError] = Field(default_factory=list)
    stage: str = Field(description="Which consumer rejected it, e.g. ingestion.validate.")
    original_event_id: str | None = None


class FeatureVector(_Typed):
    """The features of one event as a model sees them; ``event_id`` is the source event's."""

    event_type: Literal["io.driftloop.features.computed.v1"] = "io.driftloop.features.computed.v1"
    entity_id: str
    event_time: datetime
    feature_view: str
    features: Features
    label: LabelValue | None = None


class Prediction(_Typed):
    event_type: Literal["io.driftloop.prediction.made.v1"] = "io.driftloop.prediction.made.v1"
    source_event_id: str = Field(description="The scored event; labels join on it.")
    entity_id: str | None = None
    event_time: datetime | None = None
    model_name: str
    model_version: int
    role: Literal["champion", "challenger"] = Field(
        default="champion",
        description="Which side of a rollout scored it: the champion, or the version rolling out as challenger.",
    )
    served: bool = Field(
        default=True,
        description="Whether the caller got this prediction. False for a side that only scores beside the one "
        "that serves (the challenger in a shadow, the old champion in a blue-green watch): it is kept for the "
        "online verdict and never returned.",
    )
    channel: Literal["stream", "rest"]
    prediction: LabelValue
    probability: float | None = None
    label: LabelValue | None = None


class DriftDetected(_Typed):
    """Evidence that the champion no longer fits the data it sees."""

    event_type: Literal["io.driftloop.drift.detected.v1"] = "io.driftloop.drift.detected.v1"
    model_name: str
    model_version: int
    kind: Literal["concept", "data"]
    detector: str
    feature: str | None = None
    observations: int = Field(description="Labelled predictions of this version seen when drift was detected.")
    window: int = Field(description="Observations the detector kept as the new regime.")
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    change_point_time: datetime | None = Field(
        default=None, description="Event time where the new regime starts (training uses data from here on)."
    )
    evidence: dict[str, float] = Field(default_factory=dict)


class DriftUnresolved(_Typed):
    """A drift whose retraining failed or whose challenger the gate rejected: the drifted version still serves.

    Monitoring publishes it under the drift's correlation id and re-arms: after
    ``rearm_after`` more labelled predictions, if the accuracy is still below
    what it was before the drift, it raises the drift again.
    """

    event_type: Literal["io.driftloop.drift.unresolved.v1"] = "io.driftloop.drift.unresolved.v1"
    model_name: str
    model_version: int
    drift_event_id: str = Field(description="The drift event that is not resolved.")
    reason: str
    attempts: int = Field(description="Drifts raised on this version so far.")
    rearm_after: int = Field(description="Labelled predictions of this version to wait before raising it again.")


class RetrainRequested(_Typed):
    event_type: Literal["io.driftloop.training.requested.v1"] = "io.driftloop.training.requested.v1"
    model_name: str
    reason: Literal["drift", "manual", "schedule"]
    requested_by: str
    since: datetime | None = Field(default=None, description="Train on data with event_time from here on.")


class DataWindow(Contract):
    EVENT_TYPE: ClassVar[str] = "io.driftloop.data_window.v1"

    start: datetime | None
    end: datetime | None
    rows: int
    train_rows: int
    holdout_rows: int


class TrainingRunCompleted(_Typed):
    event_type: Literal["io.driftloop.training.completed.v1"] = "io.driftloop.training.completed.v1"
    run_id: str
    model_name: str
    trigger: str
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    feature_names: list[str]
    data_window: DataWindow
    metrics: Metrics = Field(description="On the time-ordered holdout.")
    artifact_uri: str = Field(description="The model fitted on the training rows: the one the gate scores.")
    artifact_sha256: str | None = _artifact_sha256()
    holdout_uri: str
    duration_seconds: float
    reference_uri: str | None = Field(
        default=None,
        description="The version's reference sample (driftloop.reference.v1 JSON): sampled training features, "
        "the holdout's predictions and their calibration, which monitoring compares the live stream with. "
        "Absent on runs from before reference samples existed.",
    )
    refit_artifact_uri: str | None = Field(
        default=None,
        description="The same estimator fitted on every row of the window (training and holdout): "
        "the model a version serves once it passes the gate.",
    )
    refit_artifact_sha256: str | None = _artifact_sha256()


class TrainingRunFailed(_Typed):
    event_type: Literal["io.driftloop.training.failed.v1"] = "io.driftloop.training.failed.v1"
    run_id: str
    model_name: str
    trigger: str
    error: str


class FloorCheck(Contract):
    """What even a first version must beat, measured on the same holdout rows."""

    EVENT_TYPE: ClassVar[str] = "io.driftloop.gate_floor.v1"

    kind: Literal["majority_class", "fixed"]
    value: float = Field(description="The majority-class predictor's metric on the holdout, or the fixed floor.")
    difference: float = Field(description="The challenger's metric minus value.")
    lower_bound: float = Field(description="Lower confidence bound of the difference.")
    passed: bool


class SliceResult(Contract):
    """Challenger against champion on the holdout rows of one slice."""

    EVENT_TYPE: ClassVar[str] = "io.driftloop.gate_slice.v1"

    name: str = Field(description="feature=value for a per-value slice, else the name given in driftloop.yaml.")
    rows: int
    challenger: float
    champion: float
    difference: float
    decided: bool = Field(description="False when the slice has too few rows to count.")
    passed: bool


class GateDecision(Contract):
    """Why a version was or was not promoted: both sides scored on the same holdout.

    The fields after ``reason`` hold every number of the paired comparison;
    they are absent on decisions made before the gate had them.
    """

    EVENT_TYPE: ClassVar[str] = "io.driftloop.gate_decision.v1"

    metric: str
    challenger: float
    champion: float | None
    min_improvement: float
    passed: bool
    reason: str
    method: str | None = Field(default=None, description="How the bounds were computed, e.g. paired_bootstrap.")
    confidence: float | None = Field(default=None, description="One-sided confidence level of the bounds.")
    difference: float | None = Field(default=None, description="Challenger minus champion on the holdout.")
    lower_bound: float | None = Field(default=None, description="Lower confidence bound of the difference.")
    p_value: float | None = Field(
        default=None, description="Of the hypothesis that the improvement is at most min_improvement."
    )
    rows: int | None = Field(default=None, description="Holdout rows both sides were scored on.")
    excluded_rows: int | None = Field(
        default=None, description="Holdout rows left out because they lie in the champion's training window."
    )
    floor: FloorCheck | None = None
    slice_margin: float | None = None
    min_slice_rows: int | None = None
    slices: list[SliceResult] = Field(default_factory=list)


class ModelVersionRegistered(_Typed):
    event_type: Literal["io.driftloop.model.registered.v1"] = "io.driftloop.model.registered.v1"
    model_name: str
    version: int
    run_id: str
    artifact_uri: str
    artifact_sha256: str | None = _artifact_sha256()
    metrics: Metrics
    parent_version: int | None = None
    data_window: DataWindow
    reference_uri: str | None = Field(
        default=None, description="The reference sample of the run that built this version, when it has one."
    )
    semver: str | None = Field(
        default=None,
        description="The version's semantic version (MAJOR.MINOR.PATCH): major when its features or dataset schema "
        "changed, minor for a retrain on new data. Absent on events from before semantic versions.",
    )


class ModelPromoted(_Typed):
    event_type: Literal["io.driftloop.model.promoted.v1"] = "io.driftloop.model.promoted.v1"
    model_name: str
    version: int
    previous_version: int | None = None
    artifact_uri: str
    artifact_sha256: str | None = _artifact_sha256()
    actor: str
    decision: GateDecision | None = None
    revision: int | None = Field(
        default=None,
        description="The model's alias revision after this change; it only goes up, so a consumer can ignore "
        "an older change that arrives late. Absent on events from before revisions existed.",
    )
    semver: str | None = Field(
        default=None,
        description="The version's semantic version (MAJOR.MINOR.PATCH): major when its features or dataset schema "
        "changed, minor for a retrain on new data. Absent on events from before semantic versions.",
    )


class ModelStaged(_Typed):
    """The gate passed a version that rolls out beside the champion before it replaces it.

    Deployment loads it as the challenger and monitoring begins the rollout's
    plan and verdict; the champion alias moves only when the rollout
    completes (a ``ModelPromoted`` then follows), and an aborted rollout ends
    with a ``PromotionRejected``.
    """

    event_type: Literal["io.driftloop.model.staged.v1"] = "io.driftloop.model.staged.v1"
    model_name: str
    version: int
    champion_version: int
    artifact_uri: str
    artifact_sha256: str | None = _artifact_sha256()
    strategy: Literal["shadow", "canary", "blue_green", "ab"]
    actor: str
    decision: GateDecision | None = None
    revision: int | None = Field(
        default=None,
        description="The model's alias revision after the challenger alias moved to this version.",
    )
    semver: str | None = None


class PromotionRejected(_Typed):
    event_type: Literal["io.driftloop.model.rejected.v1"] = "io.driftloop.model.rejected.v1"
    model_name: str
    version: int
    champion_version: int | None
    decision: GateDecision


class ModelRolledBack(_Typed):
    event_type: Literal["io.driftloop.model.rolled_back.v1"] = "io.driftloop.model.rolled_back.v1"
    model_name: str
    from_version: int
    to_version: int
    artifact_uri: str
    artifact_sha256: str | None = _artifact_sha256()
    actor: str
    reason: str
    revision: int | None = Field(
        default=None,
        description="The model's alias revision after this change; it only goes up, so a consumer can ignore "
        "an older change that arrives late. Absent on events from before revisions existed.",
    )


def _rollout_evidence() -> Any:
    return Field(
        default_factory=dict,
        description="The online verdict's numbers: both sides' labelled outcomes and errors since the rollout began, "
        "their error rates, the difference, its always-valid interval (lower, upper), the margin, alpha and the "
        "challenger's p99 latency. Empty when no verdict was involved (a direct rollout, a version that failed to "
        "load) and on events from before staged rollouts.",
    )


class _Rollout(_Typed):
    """One rollout as deployment carries it out, under the correlation id of the drift (or request) that began it."""

    model_name: str
    version: int
    previous_version: int | None = None
    strategy: str
    instance: str = Field(description="The deployment replica that reports.")


class RolloutStarted(_Rollout):
    event_type: Literal["io.driftloop.rollout.started.v1"] = "io.driftloop.rollout.started.v1"
    percent: float | None = Field(
        default=None,
        description="The challenger's share of served traffic at the start, 0-100 (0: a shadow). "
        "Absent on events from before staged rollouts.",
    )


class RolloutStepped(_Rollout):
    """A canary stage passed: the challenger's share of traffic grows."""

    event_type: Literal["io.driftloop.rollout.stepped.v1"] = "io.driftloop.rollout.stepped.v1"
    step: int = Field(
        ge=1, description="Index of the stage now entered: a rollout starts in stage 0, so its first step enters 1."
    )
    percent: float = Field(description="The challenger's share of served traffic from now on, 0-100.")
    previous_percent: float
    evidence: dict[str, float] = _rollout_evidence()


class RolloutCompleted(_Rollout):
    event_type: Literal["io.driftloop.rollout.completed.v1"] = "io.driftloop.rollout.completed.v1"
    evidence: dict[str, float] = _rollout_evidence()


class RolloutAborted(_Rollout):
    """The challenger is withdrawn and the previous version serves all traffic again."""

    event_type: Literal["io.driftloop.rollout.aborted.v1"] = "io.driftloop.rollout.aborted.v1"
    reason: str
    evidence: dict[str, float] = _rollout_evidence()


InternalEvent = Annotated[
    EventValidated
    | DeadLetter
    | FeatureVector
    | Prediction
    | DriftDetected
    | DriftUnresolved
    | RetrainRequested
    | TrainingRunCompleted
    | TrainingRunFailed
    | ModelVersionRegistered
    | ModelPromoted
    | ModelStaged
    | PromotionRejected
    | ModelRolledBack
    | RolloutStarted
    | RolloutStepped
    | RolloutCompleted
    | RolloutAborted,
    Field(discriminator="event_type"),
]

_internal: TypeAdapter[InternalEvent] = TypeAdapter(InternalEvent)


def parse_internal(raw: bytes | str) -> InternalEvent:
    """Parse any service-emitted payload into its model, chosen by ``event_type``."""
    return _internal.validate_json(raw)
