"""What goes over the wire: one pydantic model per payload, and the topic catalog.

Everything another process (in any language) can observe is defined here, so the
JSON Schemas and the AsyncAPI document in ``contracts/`` are generated, never
hand-written.
"""

from driftloop.contracts.catalog import TOPICS, TopicSpec, payload_types, topic_for
from driftloop.contracts.envelope import Contract, Envelope, ProducerContract, new_event_id, new_event_ids, utcnow
from driftloop.contracts.events import (
    DataEvent,
    DeadLetter,
    DriftDetected,
    DriftUnresolved,
    EventValidated,
    FeatureVector,
    FieldError,
    InternalEvent,
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
    parse_internal,
)

__all__ = [
    "TOPICS",
    "Contract",
    "DataEvent",
    "DeadLetter",
    "DriftDetected",
    "DriftUnresolved",
    "Envelope",
    "EventValidated",
    "FeatureVector",
    "FieldError",
    "InternalEvent",
    "LabelEvent",
    "ModelPromoted",
    "ModelRolledBack",
    "ModelStaged",
    "ModelVersionRegistered",
    "Prediction",
    "ProducerContract",
    "PromotionRejected",
    "RetrainRequested",
    "RolloutAborted",
    "RolloutCompleted",
    "RolloutStarted",
    "RolloutStepped",
    "TopicSpec",
    "TrainingRunCompleted",
    "TrainingRunFailed",
    "new_event_id",
    "new_event_ids",
    "parse_internal",
    "payload_types",
    "topic_for",
    "utcnow",
]
