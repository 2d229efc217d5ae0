"""The stages that read records through a ``ContractReader``, run in process on batches that mix good and bad records.

A record that breaks its contract comes back with the field named, the rest of
its batch is handled, and every good record gives what the contract models
give: the same vectors, byte for byte, the same Parquet files, the same rows
scored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from driftloop.artifacts import LocalArtifactStore
from driftloop.bus import Bus, Outgoing, PoisonMessage, Record
from driftloop.config import load_config
from driftloop.contracts import EventValidated, FeatureVector, LabelEvent, Prediction
from driftloop.contracts.events import FeatureValue, LabelValue
from driftloop.offline import OfflineStore, view_feature_types
from driftloop.services.deployment.domain import Served, ServingTable
from driftloop.services.deployment.handlers import Predictor, Rollouts
from driftloop.services.deployment.settings import DeploymentSettings
from driftloop.services.features.domain import EntityState
from driftloop.services.features.settings import FeaturesSettings
from driftloop.services.features.streams import FeatureStreams, build
from tests.support import APPLICATION

REPO = Path(__file__).resolve().parents[2]
CONFIG = load_config(REPO / "driftloop.yaml")
VIEW = CONFIG.feature_views[0]


class CapturingBus(Bus):
    """A bus that keeps what a block would send, so a stage's handler runs without a broker."""

    def __init__(self, home: Path) -> None:
        super().__init__(FeaturesSettings(home=home), "features")
        self.sent: dict[str, list[Outgoing]] = {}

    async def _send_batched(self, topic: str, records: list[Outgoing]) -> list[Any]:
        self.sent.setdefault(topic, []).extend(records)
        return []


def _streams(tmp_path: Path) -> tuple[FeatureStreams, CapturingBus, LocalArtifactStore]:
    bus = CapturingBus(tmp_path)
    store = LocalArtifactStore(tmp_path / "store")
    return build(FeaturesSettings(home=tmp_path), CONFIG, bus, store), bus, store


def _records(topic: str, values: Sequence[bytes]) -> list[Record]:
    return [Record(topic, 0, offset, None, value) for offset, value in enumerate(values)]


def _named(rejected: list[tuple[Record, PoisonMessage]]) -> dict[int, set[str]]:
    """Each rejected record's offset, with the fields its reason names (a union names each member it tried)."""
    return {record.offset: {_MEMBER.sub("", e.field) for e in poison.errors} for record, poison in rejected}


_MEMBER = re.compile(r"\.(bool|int|float|str)$")


def _event(event_id: str, entity: str, loan: float, event_time: Any = "2026-03-10T12:00:00.250000Z") -> bytes:
    fields = {"event_id": event_id, "correlation_id": f"c-{event_id}", "entity_id": entity, "event_time": event_time}
    return json.dumps({**fields, "features": {**APPLICATION, "loan": loan}, "label": None}).encode()


async def test_compute_rejects_what_breaks_the_contract_and_sends_the_vectors_the_models_give(tmp_path: Path) -> None:
    streams, bus, _ = _streams(tmp_path)
    values = [
        _event("a1", "alice", 100.0),
        json.dumps({**json.loads(_event("x1", "alice", 1.0)), "features": {"age": [40]}}).encode(),
        _event("b1", "bob", 50.0, event_time="2026-03-10T14:00:00+02:00"),
        b'{"event_id": "x2", "event_time": "2026-03-10T12:00:00Z", "features": {}}',
        b"not json",
        _event("a2", "alice", 300.0, event_time=1_773_144_000),  # lax: a Unix time, read by the model as before
    ]
    streams.tables.begin(0)
    async with bus.acknowledged():
        with streams.tables.attempt():
            rejected = await streams.loops["compute"].batch_handler(_records("events.validated", values))  # type: ignore[misc]

    assert _named(rejected) == {1: {"features.age"}, 3: {"entity_id"}, 4: {"$"}}
    sent = bus.sent["features"]
    occurred_at = FeatureVector.model_validate_json(sent[0][1] or b"").occurred_at
    states: dict[str, EntityState] = {}
    expected = []
    for value in (values[0], values[2], values[5]):
        event = EventValidated.model_validate_json(value)
        state = states.setdefault(event.entity_id, EntityState())
        assert state.observe(event.event_id, event.features)
        vector = FeatureVector(
            event_id=event.event_id,
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
            occurred_at=occurred_at,
            entity_id=event.entity_id,
            event_time=event.event_time,
            feature_view=VIEW.name,
            features=state.vector(VIEW, CONFIG.passthrough(VIEW), event.features),
            label=event.label,
        )
        expected.append((event.entity_id.encode(), vector.model_dump_json().encode()))
    assert [(key, value) for key, value, _, _ in sent] == expected
    assert streams.entities.get("alice")["views"][VIEW.name] == orjson.loads(expected[2][1])


def _vector(event_id: str, **fields: Any) -> bytes:
    vector = FeatureVector(
        event_id=event_id,
        entity_id="c",
        event_time="2026-03-10T23:59:59.900000Z",  # type: ignore[arg-type]
        feature_view=VIEW.name,
        features={**APPLICATION, "entity_count": 1.0, "entity_mean_loan": 120_000.0},
        label=1,
    )
    return json.dumps({**json.loads(vector.model_dump_json()), **fields}).encode()


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.parquet"))}


async def test_offline_rejects_what_breaks_the_contract_and_writes_the_files_the_models_give(tmp_path: Path) -> None:
    streams, _, store = _streams(tmp_path)
    values = [
        _vector("e1"),
        _vector("x1", event_time="yesterday"),
        _vector("e2", event_time="2026-03-11T00:30:00+01:00", label=None),  # the day before, in UTC
        _vector("x2", label={"yes": 1}),
        _vector("e3", event_time="2026-03-11T00:00:01Z", features={"salary": 1.0, "note": "new"}),
        _vector("x3", features={"salary": "high", "age": 1e400}),
    ]
    rejected = await streams.loops["offline"].batch_handler(_records("features", values))  # type: ignore[misc]

    assert _named(rejected) == {1: {"event_time"}, 3: {"label"}, 5: {"features.age"}}
    reference = LocalArtifactStore(tmp_path / "reference")
    models = [FeatureVector.model_validate_json(values[i]).model_dump() for i in (0, 2, 4)]
    OfflineStore(reference, VIEW.name, view_feature_types(CONFIG, VIEW.name)).append_vectors(models, 0, 0)
    written = _files(store.root)
    assert written == _files(reference.root) and len(written) == 2
    rows = [r for path in sorted(store.root.rglob("*.parquet")) for r in pq.read_table(path).to_pylist()]
    assert [(r["event_id"], r.get("note")) for r in rows] == [
        ("e1", None),
        ("e2", None),
        ("e3", "new"),
    ]


async def test_labels_rejects_what_breaks_the_producer_contract_and_writes_the_rest(tmp_path: Path) -> None:
    streams, _, store = _streams(tmp_path)
    values = [
        b'{"event_id": "e1", "label": 1, "label_time": "2026-03-10T12:00:00Z"}',
        b'{"event_id": "e2", "label": 0, "lable": 1, "label_time": "2026-03-10T12:00:00Z"}',
        b'{"event_id": "e3", "label_time": "2026-03-10T12:00:00Z"}',
        b'{"event_id": "e4", "label": [1], "label_time": "2026-03-10T12:00:00Z"}',
        b'{"event_id": "e5", "label": 0, "label_time": "2026-03-10T13:00:00+01:00"}',
    ]
    rejected = await streams.loops["labels"].batch_handler(_records("labels", values))  # type: ignore[misc]

    assert _named(rejected) == {1: {"lable"}, 2: {"label"}, 3: {"label"}}
    [path] = store.root.rglob("labels/date=2026-03-10/*.parquet")
    table = pq.read_table(path)
    assert table.column("event_id").to_pylist() == ["e1", "e5"]
    assert table.column("label").to_pylist() == [1, 0]
    assert len(set(table.column("label_time").to_pylist())) == 1, "12:00Z and 13:00+01:00 are one instant"
    assert LabelEvent.model_validate_json(values[0]).label == 1


class Recording:
    """A model that answers 1 with 0.75 for every row and keeps the rows it was given."""

    def __init__(self) -> None:
        self.rows: list[dict[str, FeatureValue]] = []

    def predict(self, rows: Sequence[dict[str, FeatureValue]]) -> tuple[list[LabelValue], list[float | None]]:
        self.rows += rows
        return [1] * len(rows), [0.75] * len(rows)


async def test_deployment_scores_the_vectors_that_fit_and_rejects_the_others(tmp_path: Path) -> None:
    settings = DeploymentSettings(home=tmp_path, config=REPO / "driftloop.yaml")
    bus = CapturingBus(tmp_path)
    model = Recording()
    table = ServingTable()
    table.swap(Served(CONFIG.models[0].name, 3, "file:///m/3", model))  # type: ignore[arg-type]
    predictor = Predictor(CONFIG, bus, table, Rollouts(settings, CONFIG, bus, LocalArtifactStore(tmp_path), table))
    values = [
        _vector("e1"),
        _vector("x1", features=[1, 2]),
        _vector("e2", features={"salary": 2.0}, label=None),
        _vector("x2", feature_view=None),
    ]
    async with bus.acknowledged():
        rejected = await predictor(_records("features", values))

    assert _named(rejected) == {1: {"features"}, 3: {"feature_view"}}
    assert model.rows == [FeatureVector.model_validate_json(values[i]).features for i in (0, 2)]
    predictions = [Prediction.model_validate_json(value or b"") for _, value, _, _ in bus.sent["predictions"]]
    assert [(p.source_event_id, p.model_version, p.prediction, p.label) for p in predictions] == [
        ("e1", 3, 1, 1),
        ("e2", 3, 1, None),
    ]


@pytest.mark.parametrize("topic", ["events.validated", "features", "labels"])
async def test_a_batch_of_only_bad_records_is_all_rejected_and_writes_nothing(tmp_path: Path, topic: str) -> None:
    streams, bus, store = _streams(tmp_path)
    stage = {"events.validated": "compute", "features": "offline", "labels": "labels"}[topic]
    streams.tables.begin(0)
    async with bus.acknowledged():
        with streams.tables.attempt():
            rejected = await streams.loops[stage].batch_handler(_records(topic, [b"{}", b"[]"]))  # type: ignore[misc]
    assert [record.offset for record, _ in rejected] == [0, 1]
    assert bus.sent == {} and _files(store.root) == {}
