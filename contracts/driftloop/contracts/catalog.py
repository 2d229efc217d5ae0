"""The topic catalog: which payloads travel on which topic, keyed by what.

Topic bootstrap, the AsyncAPI document and the services all read this table,
so a topic exists in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from driftloop.contracts.envelope import Contract
from driftloop.contracts.events import (
    DataEvent,
    DeadLetter,
    DriftDetected,
    DriftUnresolved,
    EventValidated,
    FeatureVector,
    LabelEvent,
    ModelPromoted,
    ModelRolledBack,
    ModelStaged,
    ModelVersionRegistered,
    Prediction,
    PromotionRejected,
    RetrainRequested,
    RolloutAborted,
    RolloutCompleted,
    RolloutStarted,
    RolloutStepped,
    TrainingRunCompleted,
    TrainingRunFailed,
)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    payloads: tuple[type[Contract], ...]
    key: str
    description: str
    partitions: int = 3
    #: Lifecycle topics are replayed from the start to rebuild state, so they keep everything.
    config: dict[str, str] = field(default_factory=dict)


_KEEP_FOREVER = {"retention.ms": "-1"}

TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec("events.raw", (DataEvent,), "entity_id", "Events as producers write them, unvalidated."),
        TopicSpec("events.validated", (EventValidated,), "entity_id", "Events that passed contract and schema."),
        TopicSpec("events.deadletter", (DeadLetter,), "source key", "Records rejected anywhere, with the reason."),
        TopicSpec("labels", (LabelEvent,), "event_id", "Labels that arrive after their event."),
        TopicSpec("features", (FeatureVector,), "entity_id", "Feature vectors, one per validated event."),
        TopicSpec("predictions", (Prediction,), "source_event_id", "Every prediction, with the model version."),
        TopicSpec(
            "drift",
            (DriftDetected, DriftUnresolved),
            "model_name",
            "Drift detected on a served model, with evidence; and drifts that retraining did not resolve.",
        ),
        TopicSpec("training.requests", (RetrainRequested,), "model_name", "Manual and scheduled retrain requests."),
        TopicSpec(
            "training.runs",
            (TrainingRunCompleted, TrainingRunFailed),
            "model_name",
            "Outcome of each training run.",
            partitions=1,
            config=_KEEP_FOREVER,
        ),
        TopicSpec(
            "registry.events",
            (ModelVersionRegistered, ModelPromoted, ModelStaged, PromotionRejected, ModelRolledBack),
            "model_name",
            "Model versions and alias changes; replayed by deployment to find the champion and the challenger.",
            partitions=1,
            config=_KEEP_FOREVER,
        ),
        TopicSpec(
            "deployment.events",
            (RolloutStarted, RolloutStepped, RolloutCompleted, RolloutAborted),
            "model_name",
            "Rollouts as each deployment replica carries them out: started, each stage stepped, completed or aborted.",
            partitions=1,
            config=_KEEP_FOREVER,
        ),
    )
}


def payload_types() -> list[type[Contract]]:
    """Every payload type on any topic, once, in catalog order."""
    seen: dict[str, type[Contract]] = {}
    for spec in TOPICS.values():
        for payload in spec.payloads:
            seen.setdefault(payload.EVENT_TYPE, payload)
    return list(seen.values())


@cache
def topic_for(payload: type[Contract]) -> str:
    """The one topic a payload type is published on (asked for every record sent, so remembered)."""
    for spec in TOPICS.values():
        if payload in spec.payloads:
            return spec.name
    raise KeyError(f"{payload.__name__} is on no topic in the catalog")
