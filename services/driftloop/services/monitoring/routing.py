"""Stage 1, routing: predictions and labels re-keyed by event id onto monitoring's join topic, and the rows
data drift reads re-keyed by model.

A producer may key its labels any way it likes; after this hop an event's
records share one partition of the join topic, in one order that a replay
repeats. A batch's join records bound for one partition travel together, as
one record holding a JSON array (``join.join_messages``): every Kafka
record costs the producer, the broker and the join's consumer several
microseconds whatever it carries, and two per event were a tenth of
monitoring's CPU. Labels read from Kafka are checked against the dataset's label spec
exactly as ingestion checks them over HTTP (``driftloop.validation``), so a
string "1" for an int label is dead-lettered rather than never matching.

The same pass turns feature vectors and the champion's predictions into
rows of each model's data watch (``datawatch.RowBatch``), one record per
model and source partition, so every input topic is read once.

The stage holds no state: its loop commits an offset only once every record
the batch produced is acknowledged.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from driftloop.bus import Bus, PoisonMessage, Record
from driftloop.bus.reader import ContractReader
from driftloop.config import DriftloopConfig, LabelSpec
from driftloop.contracts import Prediction
from driftloop.services.monitoring.datadrift import PREDICTION, PROBABILITY
from driftloop.services.monitoring.datawatch import FEATURES, PREDICTIONS, Row, RowBatch, Source
from driftloop.services.monitoring.join import JoinRecord, LabelRecord, PredictionRecord, join_messages
from driftloop.validation import Invalid, validate_label

#: The types a feature value may have in a row (JSON's scalars); None is a missing value.
_SCALARS = (bool, int, float, str)
#: Monitoring's own topic of join records, keyed by event id.
JOIN_TOPIC = "driftloop-monitoring-join"
#: Monitoring's own topic of data-drift rows, keyed by model.
ROWS_TOPIC = "driftloop-monitoring-rows"
#: Monitoring's own topic of outcomes (and the champion moves, stagings and re-arms taken in order with them),
#: keyed by model.
OUTCOMES_TOPIC = "driftloop-monitoring-outcomes"


def epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def prediction_record(prediction: dict[str, Any]) -> PredictionRecord:
    """A prediction, either side's, as a join record; ``prediction`` holds the contract's fields."""
    return PredictionRecord(
        event_id=prediction["source_event_id"],
        model=prediction["model_name"],
        version=prediction["model_version"],
        prediction=prediction["prediction"],
        label=prediction["label"],
        event_time=epoch(prediction["event_time"] or prediction["occurred_at"]),
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
    """The batch handler: every record becomes a join record or rows, or a dead letter with the reason."""

    def __init__(self, bus: Bus, config: DriftloopConfig, rows_per_record: int) -> None:
        self.bus = bus
        self.spec = config.dataset.label
        self.rows_per_record = rows_per_record
        self.predictions = ContractReader(Prediction)
        #: Per feature view, the models that read it and the features each reads.
        self.views: dict[str, list[tuple[str, list[str]]]] = {}
        for model in config.models:
            self.views.setdefault(model.feature_view, []).append((model.name, model.features))

    async def __call__(self, records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
        bad: list[tuple[Record, PoisonMessage]] = []
        rows: dict[tuple[Source, str, int], list[Row]] = {}
        joined: list[JoinRecord] = []
        for record in records:
            if record.topic == "features":
                self.feature_rows(record, rows)
                continue
            try:
                joined.append(self.join_record(record, rows))
            except PoisonMessage as exc:
                bad.append((record, exc))
        if joined:
            count = await self.bus.partition_count(JOIN_TOPIC)
            self.bus.defer(JOIN_TOPIC, [(None, value, [], p) for p, value in join_messages(joined, count)])
        for (source, model, partition), found in rows.items():
            for start in range(0, len(found), self.rows_per_record):
                batch = RowBatch(model, source, partition, found[start : start + self.rows_per_record])
                await self.bus.send(ROWS_TOPIC, orjson.dumps(batch.to_dict()), model, [], wait=False)
        return bad

    def join_record(self, record: Record, rows: dict[tuple[Source, str, int], list[Row]]) -> JoinRecord:
        """A label, or a prediction; a champion's is also a row of its model's prediction columns, while a
        challenger's only joins its labels, for the rollout's verdict."""
        if record.topic != "predictions":
            return label_record(record.value, record.timestamp, self.spec)
        prediction = self.predictions.read(record)
        if prediction["role"] != "champion":
            return prediction_record(prediction)
        values = {PREDICTION: prediction["prediction"], PROBABILITY: prediction["probability"]}
        rows.setdefault((PREDICTIONS, prediction["model_name"], record.partition), []).append(
            (record.offset, prediction["model_version"], values)
        )
        return prediction_record(prediction)

    def feature_rows(self, record: Record, rows: dict[tuple[Source, str, int], list[Row]]) -> None:
        """The vector as a row of every model that reads its view, with that model's features only.

        Only the view and the features are read, without the contract's full
        validation: a vector that does not fit is dead-lettered by deployment,
        which scores this topic, and here a value that is not a scalar is
        simply missing from the row.
        """
        try:
            vector = orjson.loads(record.value)
            view, features = vector["feature_view"], vector["features"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if not isinstance(features, dict):
            return
        for model, names in self.views.get(view, []) if isinstance(view, str) else []:
            values = {n: v if isinstance(v, _SCALARS) else None for n in names for v in (features.get(n),)}
            rows.setdefault((FEATURES, model, record.partition), []).append((record.offset, None, values))
