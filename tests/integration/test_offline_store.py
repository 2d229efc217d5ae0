"""The offline store on a local directory and on S3 (moto's server via ``minio``): layout, point-in-time
training sets, dedupe of replayed batches, window pruning and the migration from the JSON-lines layout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from driftloop.artifacts import ArtifactStore, open_store
from driftloop.cli.main import app
from driftloop.contracts import FeatureVector, LabelEvent
from driftloop.offline import OfflineStore
from driftloop.settings import DriftloopSettings

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TYPES = {"amount": "float", "age": "int", "city": "str", "member": "bool"}
CONFIG = """
dataset:
  name: d
  features:
    amount: {type: float}
    age: {type: int}
    city: {type: str}
    member: {type: bool}
feature_views:
  - name: v
    passthrough: all
models:
  - {name: m, feature_view: v, features: [amount, age]}
"""


def vector(i: int, event_time: datetime, written: datetime | None = None, label: int | None = None) -> dict[str, Any]:
    """A vector's fields as the features service reads them from its topic."""
    return FeatureVector(
        event_id=f"e{i}",
        entity_id=f"c{i % 3}",
        event_time=event_time,
        feature_view="v",
        features={"amount": i + 0.5, "age": 20 + i, "city": f"town {i}", "member": i % 2 == 0},
        label=label,
        occurred_at=written or event_time + timedelta(seconds=1),
    ).model_dump()


def label(**fields: Any) -> dict[str, Any]:
    return LabelEvent(**fields).model_dump()


def test_training_sets_are_point_in_time_correct_and_deduplicated(store: ArtifactStore) -> None:
    offline = OfflineStore(store, "v")
    now = datetime.now(UTC)
    vectors = [
        FeatureVector(
            event_id=f"e{i}",
            entity_id="c",
            event_time=now - timedelta(minutes=10 - i),
            feature_view="v",
            features={"x": float(i)},
            label=None if i % 2 else i % 3,
            occurred_at=now - timedelta(minutes=9 - i),
        ).model_dump()
        for i in range(6)
    ]
    offline.append_vectors(vectors[:4], partition=0, first_offset=0)
    offline.append_vectors(vectors[2:], partition=0, first_offset=2)  # a replayed, overlapping batch
    offline.append_labels(
        [
            label(event_id="e1", label=1, label_time=now - timedelta(minutes=3)),
            label(event_id="e3", label=0, label_time=now + timedelta(minutes=5)),
        ],
        0,
        0,
    )

    rows = offline.training_set(as_of=now)
    assert [(r.event_id, r.label) for r in rows] == [("e0", 0), ("e1", 1), ("e2", 2), ("e4", 1)]
    later = offline.training_set(as_of=now + timedelta(minutes=6))
    assert ("e3", 0) in [(r.event_id, r.label) for r in later], "a label known later joins later"
    since = now - timedelta(minutes=8)
    assert [r.event_id for r in offline.training_set(as_of=now, since=since)] == ["e2", "e4"]
    assert [r.event_id for r in offline.training_set(as_of=now, max_rows=2)] == ["e2", "e4"]


def test_a_label_or_a_vector_not_yet_known_at_as_of_is_left_out(store: ArtifactStore) -> None:
    offline = OfflineStore(store, "v", TYPES)
    offline.append_vectors(
        [
            vector(1, NOW - timedelta(hours=2)),
            vector(2, NOW - timedelta(hours=1)),
            vector(3, NOW - timedelta(minutes=5), written=NOW + timedelta(minutes=1), label=1),  # written later
        ],
        partition=1,
        first_offset=40,
    )
    offline.append_labels(
        [
            label(event_id="e1", label=1, label_time=NOW - timedelta(minutes=30)),
            label(event_id="e2", label=0, label_time=NOW + timedelta(seconds=1)),  # known after as_of
        ],
        partition=0,
        first_offset=7,
    )

    rows = offline.training_set(as_of=NOW)
    assert [(r.event_id, r.label) for r in rows] == [("e1", 1)]
    assert rows[0].features == {"amount": 1.5, "age": 21, "city": "town 1", "member": False}
    assert rows[0].event_time == NOW - timedelta(hours=2)
    assert rows[0].entity_id == "c1"
    later = offline.training_set(as_of=NOW + timedelta(minutes=2))
    assert [(r.event_id, r.label) for r in later] == [("e1", 1), ("e2", 0), ("e3", 1)]


def test_the_latest_label_known_at_as_of_wins(store: ArtifactStore) -> None:
    offline = OfflineStore(store, "v", TYPES)
    offline.append_vectors([vector(1, NOW - timedelta(hours=1))], partition=0, first_offset=0)
    offline.append_labels([label(event_id="e1", label=0, label_time=NOW - timedelta(minutes=20))], 0, 0)
    offline.append_labels([label(event_id="e1", label=1, label_time=NOW - timedelta(minutes=10))], 0, 1)
    assert [r.label for r in offline.training_set(as_of=NOW - timedelta(minutes=15))] == [0]
    assert [r.label for r in offline.training_set(as_of=NOW)] == [1], "the correction replaces the first label"


def test_files_are_dated_hive_style_and_a_replayed_batch_overwrites_its_own_files(store: ArtifactStore) -> None:
    offline = OfflineStore(store, "v", TYPES)
    batch = [vector(1, NOW - timedelta(days=1)), vector(2, NOW), vector(3, NOW)]
    offline.append_vectors(batch, partition=3, first_offset=120)
    offline.append_vectors(batch, partition=3, first_offset=120)  # the same batch after a crash
    offline.append_labels([label(event_id="e2", label=1, label_time=NOW)], partition=2, first_offset=9)

    assert list(store.list("offline/v/")) == [
        "offline/v/labels/date=2026-03-10/part-0002-000000000009.parquet",
        "offline/v/vectors/date=2026-03-09/part-0003-000000000120.parquet",
        "offline/v/vectors/date=2026-03-10/part-0003-000000000120.parquet",
    ]
    today = store.get("offline/v/vectors/date=2026-03-10/part-0003-000000000120.parquet")
    table = pq.read_table(pa.BufferReader(today))
    assert table.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("written_at").type == pa.timestamp("us", tz="UTC")
    assert {name: str(table.schema.field(name).type) for name in TYPES} == {
        "amount": "double",
        "age": "int64",
        "city": "string",
        "member": "bool",
    }
    assert table.column("event_id").to_pylist() == ["e2", "e3"]
    assert [r.event_id for r in offline.training_set(as_of=NOW + timedelta(hours=1))] == ["e2"]


def test_duckdb_reads_the_local_layout_as_a_date_partitioned_dataset(tmp_path: Path) -> None:
    """What a user's engine does: no driftloop code on the read path, only the folder and its Hive partitions."""
    offline = OfflineStore(open_store(DriftloopSettings(artifact_uri=f"file://{tmp_path}")), "v", TYPES)
    offline.append_vectors([vector(i, NOW - timedelta(days=i)) for i in range(4)], partition=0, first_offset=0)
    query = f"""
        SELECT date::VARCHAR, count(*), sum(age) FROM read_parquet(
            '{tmp_path}/offline/v/vectors/*/*.parquet', hive_partitioning = true)
        WHERE date >= '2026-03-08' GROUP BY date ORDER BY date
    """
    assert duckdb.sql(query).fetchall() == [("2026-03-08", 1, 22), ("2026-03-09", 1, 21), ("2026-03-10", 1, 20)]


def test_a_training_set_opens_only_the_partitions_of_its_window(store: ArtifactStore) -> None:
    """Corrupt files sit outside the window: a run that opened them would fail."""
    offline = OfflineStore(store, "v", TYPES)
    offline.append_vectors([vector(1, NOW - timedelta(hours=3), label=1)], partition=0, first_offset=0)
    offline.append_labels([label(event_id="e1", label=0, label_time=NOW - timedelta(hours=1))], 0, 0)
    for key in (
        "offline/v/vectors/date=2026-03-08/part-0000-000000000000.parquet",  # before since
        "offline/v/vectors/date=2026-03-11/part-0000-000000000000.parquet",  # after as_of
        "offline/v/labels/date=2026-03-07/part-0000-000000000000.parquet",  # before since - max_event_age
    ):
        store.put(key, b"not parquet")

    rows = offline.training_set(as_of=NOW, since=NOW - timedelta(hours=6), max_event_age=timedelta(days=2))
    assert [(r.event_id, r.label) for r in rows] == [("e1", 0)]
    with pytest.raises(duckdb.Error):
        offline.training_set(as_of=NOW)  # the whole history: the old corrupt files are in scope


def test_an_empty_window_gives_no_rows(store: ArtifactStore) -> None:
    offline = OfflineStore(store, "v", TYPES)
    assert offline.training_set(as_of=NOW) == []
    offline.append_vectors([vector(1, NOW - timedelta(days=3), label=1)], partition=0, first_offset=0)
    assert offline.training_set(as_of=NOW, since=NOW - timedelta(days=1)) == []


def test_labels_of_mixed_types_land_as_text_instead_of_stopping_the_writer(store: ArtifactStore) -> None:
    offline = OfflineStore(store, "v", TYPES)
    offline.append_vectors([vector(1, NOW - timedelta(hours=1)), vector(2, NOW - timedelta(hours=1))], 0, 0)
    offline.append_labels(
        [
            label(event_id="e1", label=1, label_time=NOW - timedelta(minutes=1)),
            label(event_id="e2", label="yes", label_time=NOW - timedelta(minutes=1)),
        ],
        0,
        0,
    )
    assert [(r.event_id, r.label) for r in offline.training_set(as_of=NOW)] == [("e1", "1"), ("e2", '"yes"')]


def _legacy_segment(store: ArtifactStore, key: str, records: list[dict[str, object]]) -> None:
    store.put(key, "\n".join(json.dumps(r) for r in records).encode())


def test_the_migration_rewrites_the_json_lines_layout_and_can_run_again(
    store: ArtifactStore, store_settings: DriftloopSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def legacy_vector(i: int, hours_ago: int, label: int | None) -> dict[str, object]:
        event_time = NOW - timedelta(hours=hours_ago)
        return {
            "event_id": f"e{i}",
            "entity_id": "c",
            "event_time": event_time.isoformat(),
            "written_at": (event_time + timedelta(seconds=2)).isoformat(),
            "features": {"amount": i + 0.5, "age": 30 + i, "city": "x", "member": True},
            "label": label,
        }

    _legacy_segment(
        store,
        "datasets/v/vectors/hour=2026030912/part-0000-000000000000.jsonl",
        [legacy_vector(1, 24, 1), legacy_vector(2, 23, None), legacy_vector(3, 22, None)],
    )
    _legacy_segment(
        store,
        "datasets/v/vectors/hour=2026031011/part-0001-000000000005.jsonl",
        [legacy_vector(3, 22, None), legacy_vector(4, 1, 0)],  # e3 again: a replayed batch
    )
    _legacy_segment(
        store,
        "datasets/v/labels/hour=2026031011/part-0000-000000000000.jsonl",
        [
            {"event_id": "e2", "label": 0, "label_time": (NOW - timedelta(hours=2)).isoformat()},
            {"event_id": "e3", "label": 1, "label_time": (NOW + timedelta(hours=1)).isoformat()},
        ],
    )
    config = tmp_path / "driftloop.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("DRIFTLOOP_CONFIG", str(config))
    for name, value in store_settings.model_dump(mode="json").items():
        if name in {"artifact_uri", "s3_endpoint", "s3_access_key", "s3_secure"}:
            monkeypatch.setenv(f"DRIFTLOOP_{name.upper()}", str(value).lower() if name == "s3_secure" else value)
    monkeypatch.setenv("DRIFTLOOP_S3_SECRET_KEY", store_settings.s3_secret_key.get_secret_value())

    first = CliRunner().invoke(app, ["offline", "migrate"])
    assert first.exit_code == 0, first.output
    assert "v: 3 segments, 7 rows" in first.output
    files = list(store.list("offline/"))
    again = CliRunner().invoke(app, ["offline", "migrate", "--view", "v"])
    assert again.exit_code == 0, again.output
    assert list(store.list("offline/")) == files, "a second run overwrites the same files"

    offline = OfflineStore(store, "v")
    rows = offline.training_set(as_of=NOW)
    assert [(r.event_id, r.label) for r in rows] == [("e1", 1), ("e2", 0), ("e4", 0)]
    assert rows[0].features == {"amount": 1.5, "age": 31, "city": "x", "member": True}
    assert [r.event_id for r in offline.training_set(as_of=NOW + timedelta(hours=2))] == ["e1", "e2", "e3", "e4"]
    table = pq.read_table(pa.BufferReader(store.get(files[-1])))
    assert table.schema.field("age").type == pa.int64(), "declared types from driftloop.yaml"


def test_a_feature_named_like_a_column_of_the_store_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = open_store(DriftloopSettings(artifact_uri=f"file://{tmp_path}"))
    clashing = {**vector(1, NOW), "features": {"label": 1.0, "amount": 2.0}}
    with pytest.raises(ValueError, match=r"\['label'\] clash"):
        OfflineStore(store, "v").append_vectors([clashing], partition=0, first_offset=0)
    assert list(store.list("offline/")) == []


def test_a_batch_across_midnight_lands_per_utc_date_with_each_file_typed_by_its_own_rows(store: ArtifactStore) -> None:
    """Times in any offset (or none: UTC) become UTC; each date's file has only the columns and types of its rows."""
    east, west = timezone(timedelta(hours=9)), timezone(timedelta(hours=-5))
    times = [
        datetime(2026, 3, 10, 8, 30, tzinfo=east),  # 23:30 the day before, in UTC
        datetime(2026, 3, 9, 23, 45),  # naive: taken as UTC
        datetime(2026, 3, 9, 19, 15, tzinfo=west),  # 00:15 in UTC
        datetime(2026, 3, 10, 1, 0, tzinfo=UTC),
    ]
    batch = [vector(i, at, written=NOW, label=i % 2) for i, at in enumerate(times)]
    batch[0]["features"] = {**batch[0]["features"], "note": "late"}  # a feature the view does not declare
    batch[3]["features"] = {**batch[3]["features"], "age": "old"}  # breaks the declared int: the column is text
    OfflineStore(store, "v", TYPES).append_vectors(batch, partition=1, first_offset=5)

    keys = list(store.list("offline/v/vectors/"))
    assert keys == [
        "offline/v/vectors/date=2026-03-09/part-0001-000000000005.parquet",
        "offline/v/vectors/date=2026-03-10/part-0001-000000000005.parquet",
    ]
    before, after = (pq.read_table(pa.BufferReader(store.get(key))) for key in keys)
    assert before.column("event_id").to_pylist() == ["e0", "e1"]
    assert after.column("event_id").to_pylist() == ["e2", "e3"]
    assert before.column("event_time").to_pylist() == [
        datetime(2026, 3, 9, 23, 30, tzinfo=UTC),
        datetime(2026, 3, 9, 23, 45, tzinfo=UTC),
    ]
    assert after.column("event_time").to_pylist()[0] == datetime(2026, 3, 10, 0, 15, tzinfo=UTC)
    assert set(after.column("written_at").to_pylist()) == {NOW}
    assert before.column("note").to_pylist() == ["late", None] and "note" not in after.column_names
    assert before.schema.field("age").type == pa.int64() and after.column("age").to_pylist() == ["22", '"old"']
    assert after.column("label").to_pylist() == [0, 1]
