"""The offline store: every feature vector and every late label, as JSON-lines segments.

Segments live in the artifact store (a directory or S3) under
``datasets/<view>/{vectors,labels}/hour=YYYYMMDDHH/part-<partition>-<offset>.jsonl``.
The name is derived from the first record's position, so a batch replayed
after a crash overwrites its own segment; readers also dedupe by
``event_id``, which covers batches that were cut differently on replay.

Training sets are point-in-time correct: a row and its label count only if
both were known at ``as_of``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from driftloop.artifacts import ArtifactStore
from driftloop.contracts import FeatureVector, LabelEvent, utcnow
from driftloop.contracts.events import Features, LabelValue


@dataclass(frozen=True)
class TrainingRow:
    event_id: str
    entity_id: str
    event_time: datetime
    features: Features
    label: LabelValue


def _hour(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H")


class OfflineStore:
    def __init__(self, store: ArtifactStore, view: str) -> None:
        self.store = store
        self.view = view

    def _key(self, kind: str, written: datetime, partition: int, offset: int) -> str:
        return f"datasets/{self.view}/{kind}/hour={_hour(written)}/part-{partition:04d}-{offset:012d}.jsonl"

    def append_vectors(self, vectors: Sequence[FeatureVector], partition: int, first_offset: int) -> str:
        lines = (
            json.dumps(
                {
                    "event_id": v.event_id,
                    "entity_id": v.entity_id,
                    "event_time": v.event_time.isoformat(),
                    "written_at": v.occurred_at.isoformat(),
                    "features": v.features,
                    "label": v.label,
                }
            )
            for v in vectors
        )
        written = vectors[0].occurred_at
        return self.store.put(self._key("vectors", written, partition, first_offset), "\n".join(lines).encode())

    def append_labels(self, labels: Sequence[LabelEvent], partition: int, first_offset: int) -> str:
        now = utcnow()
        lines = (
            json.dumps(
                {
                    "event_id": lab.event_id,
                    "label": lab.label,
                    "label_time": (lab.label_time or now).isoformat(),
                }
            )
            for lab in labels
        )
        return self.store.put(self._key("labels", now, partition, first_offset), "\n".join(lines).encode())

    def _segments(self, kind: str, since: datetime | None) -> Iterator[dict[str, object]]:
        first_hour = _hour(since) if since else ""
        for key in self.store.list(f"datasets/{self.view}/{kind}/"):
            hour = key.rsplit("/hour=", 1)[-1][:10]
            if hour >= first_hour:
                for line in self.store.get(key).splitlines():
                    if line.strip():
                        yield json.loads(line)

    def training_set(
        self,
        *,
        as_of: datetime | None = None,
        since: datetime | None = None,
        max_rows: int | None = None,
        max_event_age: timedelta = timedelta(days=7),
    ) -> list[TrainingRow]:
        """Labelled rows with ``since <= event_time <= as_of``, oldest first, the newest ``max_rows``.

        Segments are bucketed by write hour; an event is written at most
        ``max_event_age`` after it happened, so only buckets from ``since -
        max_event_age`` can hold rows of the window.
        """
        as_of = as_of or utcnow()
        scan_from = since - max_event_age if since else None
        labels: dict[str, object] = {}
        for rec in self._segments("labels", scan_from):
            if datetime.fromisoformat(str(rec["label_time"])) <= as_of:
                labels[str(rec["event_id"])] = rec["label"]
        rows: dict[str, TrainingRow] = {}
        for rec in self._segments("vectors", scan_from):
            event_time = datetime.fromisoformat(str(rec["event_time"]))
            written = datetime.fromisoformat(str(rec["written_at"]))
            if written > as_of or event_time > as_of or (since and event_time < since):
                continue
            event_id = str(rec["event_id"])
            label = labels.get(event_id, rec["label"])
            if not isinstance(label, bool | int | float | str):
                continue
            rows[event_id] = TrainingRow(
                event_id=event_id,
                entity_id=str(rec["entity_id"]),
                event_time=event_time,
                features=rec["features"],  # type: ignore[arg-type]
                label=label,
            )
        ordered = sorted(rows.values(), key=lambda r: (r.event_time, r.event_id))
        return ordered[-max_rows:] if max_rows else ordered
