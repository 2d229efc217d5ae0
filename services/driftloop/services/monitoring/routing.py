"""Stage 1, routing: predictions and labels re-keyed by event id onto monitoring's join topic.

A producer may key its labels any way it likes; after this hop an event's
records share one partition of the join topic, in one order that a replay
repeats. Labels read from Kafka are checked against the dataset's label spec
exactly as ingestion checks them over HTTP (``driftloop.validation``), so a
string "1" for an int label is dead-lettered rather than never matching.

The stage holds no state, so it runs on the bus's ``ConsumerLoop`` rather
than in faust: the loop commits an offset only once every record the batch
produced is acknowledged. faust, started on a backlog, can pass over records
it fetched while its tables were still recovering, and a label passed over
here is a prediction never scored.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson

from driftloop.bus import Bus, PoisonMessage, Record
from driftloop.config import LabelSpec
from driftloop.contracts import Prediction
from driftloop.services.monitoring.join import JoinRecord, LabelRecord, PredictionRecord
from driftloop.validation import Invalid, validate_label

#: Monitoring's own topic of join records, keyed by event id.
JOIN_TOPIC = "driftloop-monitoring-join"


def epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def prediction_record(record: Record) -> JoinRecord | None:
    """A champion's prediction as a join record; a challenger's is not joined here."""
    prediction = record.parse(Prediction)
    if prediction.role != "champion":
        return None
    return PredictionRecord(
        event_id=prediction.source_event_id,
        model=prediction.model_name,
        version=prediction.model_version,
        prediction=prediction.prediction,
        label=prediction.label,
        event_time=epoch(prediction.event_time or prediction.occurred_at),
    )


def label_record(value: bytes, produced: datetime | None, spec: LabelSpec) -> JoinRecord:
    """A label as a join record; one without ``label_time`` is stamped with when its record was produced."""
    try:
        label = validate_label(orjson.loads(value), spec)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"malformed JSON: {exc}") from exc
    except Invalid as exc:
        raise PoisonMessage(str(exc), exc.errors) from exc
    stamp = label.label_time or produced
    return LabelRecord(label.event_id, label.label, epoch(stamp) if stamp else time.time())


class Router:
    """The batch handler: every record becomes a join record, or a dead letter with the reason."""

    def __init__(self, bus: Bus, spec: LabelSpec) -> None:
        self.bus = bus
        self.spec = spec

    async def __call__(self, records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
        bad: list[tuple[Record, PoisonMessage]] = []
        for record in records:
            try:
                joined = (
                    prediction_record(record)
                    if record.topic == "predictions"
                    else label_record(record.value, record.timestamp, self.spec)
                )
            except PoisonMessage as exc:
                bad.append((record, exc))
                continue
            if joined is not None:
                await self.bus.send(JOIN_TOPIC, orjson.dumps(joined.to_dict()), joined.event_id, [], wait=False)
        return bad
