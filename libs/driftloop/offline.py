"""The offline store: every feature vector and every late label, as Parquet, read point-in-time with DuckDB.

Two Hive-style datasets per feature view live in the artifact store (a
directory or S3)::

    offline/<view>/vectors/date=YYYY-MM-DD/part-<partition>-<offset>.parquet   (date of event_time, UTC)
    offline/<view>/labels/date=YYYY-MM-DD/part-<partition>-<offset>.parquet    (date of label_time, UTC)

Each is dated by the time a training set filters it on, so a run opens only
the partitions of its window, and Spark, Trino or DuckDB read either folder as
one table partitioned by ``date``. A file's name is its Kafka batch's first
position, so a batch replayed after a crash overwrites its own files; readers
also dedupe by ``event_id`` (the latest write wins), which covers batches that
were cut differently on replay.

Training sets are point-in-time correct: a row and its label count only if
both were known at ``as_of``.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from driftloop.artifacts import ArtifactStore, LocalArtifactStore
from driftloop.config import DriftloopConfig
from driftloop.contracts import utcnow
from driftloop.contracts.events import Features, LabelValue

FeatureType = Literal["float", "int", "str", "bool"]

_ARROW_TYPES: dict[str, pa.DataType] = {
    "float": pa.float64(),
    "int": pa.int64(),
    "str": pa.string(),
    "bool": pa.bool_(),
}
_TIMESTAMP = pa.timestamp("us", tz="UTC")
#: Columns of the vectors dataset besides the features; ``date`` is the partition column engines add.
RESERVED = frozenset({"event_id", "entity_id", "event_time", "written_at", "label", "label_time", "date"})
_LEGACY_NAME = re.compile(r"part-(\d+)-(\d+)\.jsonl$")
_DATE = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")
#: Objects fetched at once when a window is read from S3.
_DOWNLOADS = 8


@dataclass(frozen=True)
class TrainingRow:
    event_id: str
    entity_id: str
    event_time: datetime
    features: Features
    label: LabelValue


@dataclass(frozen=True)
class MigrationReport:
    segments: int
    rows: int


def view_feature_types(config: DriftloopConfig, view: str) -> dict[str, FeatureType]:
    """The declared type of every feature a view produces: passthrough ones from the dataset, aggregates float."""
    spec = config.view(view)
    types: dict[str, FeatureType] = {name: config.dataset.features[name].type for name in config.passthrough(spec)}
    types.update({a.output_name: "float" for a in spec.entity_aggregates})
    return types


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _column(values: Sequence[Any], declared: pa.DataType | None) -> pa.Array:
    """A typed column, or JSON text when the values fit neither the declared nor one inferred type.

    Ingestion checks features against the dataset schema, so the fallback is
    for labels, which arrive unchecked: a batch holding ``1`` and ``"1"`` still
    lands, whole, instead of stopping the writer.
    """
    try:
        return pa.array(values, type=declared)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())


def _vector_table(
    vectors: Sequence[Mapping[str, Any]], times: pa.Array, feature_types: Mapping[str, FeatureType]
) -> pa.Table:
    """One column per feature rather than a map or a JSON blob.

    Engines then filter, aggregate and prune on features as on any column
    (``SELECT avg(salary) …``), Parquet stores and compresses each by its type,
    and a training set reads back the exact Python values it was given. Names
    come from the view's declared types, plus any the vectors hold beyond them
    (typed by their values); files written before a feature was added simply
    lack its column, which readers merge by name. ``times`` is the vectors'
    ``event_time`` column, already built to find their dates.
    """
    features = [v["features"] for v in vectors]
    names = list(feature_types) + sorted(set().union(*features) - feature_types.keys())
    clash = RESERVED.intersection(names)
    if clash:
        raise ValueError(f"features {sorted(clash)} clash with columns of the offline store; rename them")
    columns: dict[str, pa.Array] = {
        "event_id": pa.array([v["event_id"] for v in vectors], type=pa.string()),
        "entity_id": pa.array([v["entity_id"] for v in vectors], type=pa.string()),
        "event_time": times,
        "written_at": pa.array([v["occurred_at"] for v in vectors], type=_TIMESTAMP),
        "label": _column([v["label"] for v in vectors], None),
    }
    for name in names:
        declared = feature_types.get(name)
        columns[name] = _column([f.get(name) for f in features], _ARROW_TYPES[declared] if declared else None)
    return pa.table(columns)


def _label_table(labels: Sequence[Mapping[str, Any]], times: pa.Array) -> pa.Table:
    return pa.table(
        {
            "event_id": pa.array([r["event_id"] for r in labels], type=pa.string()),
            "label": _column([r["label"] for r in labels], None),
            "label_time": times,
            "written_at": pa.array([r["written_at"] for r in labels], type=_TIMESTAMP),
        }
    )


def _by_day(times: pa.Array) -> list[tuple[date, list[int] | None]]:
    """The UTC dates of ``times``, in order, each with the positions it holds (None: all of them).

    A batch nearly always falls on one date, which one pass in Arrow finds; a
    batch across midnight is split row by row.
    """
    days = pc.cast(times, pa.date32())
    distinct = pc.unique(days).to_pylist()
    if len(distinct) == 1:
        return [(distinct[0], None)]
    positions: dict[date, list[int]] = {}
    for index, day in enumerate(days.to_pylist()):
        positions.setdefault(day, []).append(index)
    return sorted(positions.items())


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def _connect() -> duckdb.DuckDBPyConnection:
    # The machine running a service may have no internet: never try to fetch an extension.
    return duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})


_TRAINING_SQL = """
WITH vectors AS (
    SELECT * FROM read_parquet($vectors, union_by_name = true, filename = true, hive_partitioning = false)
    WHERE written_at <= $as_of AND event_time <= $as_of {since}
    QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY written_at DESC, filename DESC) = 1
), labels AS (
    {labels}
)
SELECT v.* EXCLUDE (event_time, written_at, label, filename),
       epoch_us(v.event_time) AS event_us,
       coalesce(l.label, v.label) AS label
FROM vectors v LEFT JOIN labels l ON l.event_id = v.event_id
WHERE coalesce(l.label, v.label) IS NOT NULL
ORDER BY v.event_time DESC, v.event_id DESC
{limit}
"""
_LABELS_SQL = """
    SELECT event_id, label FROM read_parquet($labels, union_by_name = true, filename = true, hive_partitioning = false)
    WHERE label_time <= $as_of
    QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY written_at DESC, label_time DESC, filename DESC) = 1
"""
_NO_LABELS_SQL = "SELECT NULL::VARCHAR AS event_id, NULL AS label WHERE false"


class OfflineStore:
    def __init__(self, store: ArtifactStore, view: str, feature_types: Mapping[str, FeatureType] | None = None) -> None:
        self.store = store
        self.view = view
        self.feature_types: Mapping[str, FeatureType] = feature_types or {}

    def _prefix(self, kind: str) -> str:
        return f"offline/{self.view}/{kind}/"

    def _write(self, kind: str, rows: Sequence[Mapping[str, Any]], partition: int, offset: int) -> list[str]:
        """One file per date the batch touches, each named by the batch's first Kafka position.

        ``rows`` hold a ``FeatureVector``'s fields each (vectors), or a label's
        ``event_id``, ``label``, ``label_time`` and ``written_at`` (labels).
        Times become UTC in Arrow's conversion, as ``_utc`` makes them: an
        aware one is converted, a naive one is taken as UTC.
        """
        time_column = "event_time" if kind == "vectors" else "label_time"
        times = pa.array([row[time_column] for row in rows], type=_TIMESTAMP)
        uris = []
        for day, positions in _by_day(times):
            chunk = rows if positions is None else [rows[i] for i in positions]
            chunk_times = times if positions is None else times.take(positions)
            if kind == "vectors":
                table = _vector_table(chunk, chunk_times, self.feature_types)
            else:
                table = _label_table(chunk, chunk_times)
            key = f"{self._prefix(kind)}date={day.isoformat()}/part-{partition:04d}-{offset:012d}.parquet"
            uris.append(self.store.put(key, _parquet(table)))
        return uris

    def append_vectors(self, vectors: Sequence[Mapping[str, Any]], partition: int, first_offset: int) -> list[str]:
        """``vectors`` hold a ``FeatureVector``'s fields each, as read from the topic (``ContractReader``)."""
        return self._write("vectors", vectors, partition, first_offset)

    def append_labels(self, labels: Sequence[Mapping[str, Any]], partition: int, first_offset: int) -> list[str]:
        """``labels`` hold a ``LabelEvent``'s fields each; a label without its own time is known from when it is
        written."""
        now = utcnow()
        rows = [
            {
                "event_id": lab["event_id"],
                "label": lab["label"],
                "label_time": lab["label_time"] or now,
                "written_at": now,
            }
            for lab in labels
        ]
        return self._write("labels", rows, partition, first_offset)

    def _keys(self, kind: str, first: date | None, last: date) -> list[str]:
        """Keys of the files dated ``first`` … ``last``: only those partitions are listed, none other opened."""
        root = self._prefix(kind)
        prefixes = [root] if first is None else [f"{root}date={day}/" for day in _days(first, last)]
        dated = ((key, _DATE.search(key)) for prefix in prefixes for key in self.store.list(prefix))
        return [key for key, day in dated if day and day.group(1) <= last.isoformat()]

    def _paths(self, keys: list[str], scratch: Path) -> list[str]:
        """Local files are read in place; others are fetched into ``scratch`` (DuckDB has no S3 reader offline)."""
        if isinstance(self.store, LocalArtifactStore):
            return [str(self.store.root / key) for key in keys]

        def fetch(key: str) -> str:
            path = scratch / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.store.get(key))
            return str(path)

        with ThreadPoolExecutor(_DOWNLOADS) as pool:
            return list(pool.map(fetch, keys))

    def training_set(
        self,
        *,
        as_of: datetime | None = None,
        since: datetime | None = None,
        max_rows: int | None = None,
        max_event_age: timedelta = timedelta(days=7),
    ) -> list[TrainingRow]:
        """Labelled rows with ``since <= event_time <= as_of``, oldest first, the newest ``max_rows``.

        Vectors are read from the dates of ``since`` … ``as_of``. A label comes
        after its event, so one for a row of the window is normally dated from
        ``since`` on; labels are read from ``since - max_event_age`` so that one
        a producer stamps with an earlier time (the outcome's rather than the
        report's, or a lagging clock) is still found, as far back as an event
        itself may lag.
        """
        as_of = _utc(as_of or utcnow())
        since = _utc(since) if since else None
        vector_keys = self._keys("vectors", since.date() if since else None, as_of.date())
        if not vector_keys:
            return []
        label_keys = self._keys("labels", (since - max_event_age).date() if since else None, as_of.date())
        with tempfile.TemporaryDirectory(prefix="driftloop-offline-") as scratch:
            params: dict[str, Any] = {"vectors": self._paths(vector_keys, Path(scratch)), "as_of": as_of}
            if label_keys:
                params["labels"] = self._paths(label_keys, Path(scratch))
            if since:
                params["since"] = since
            if max_rows:
                params["max_rows"] = max_rows
            sql = _TRAINING_SQL.format(
                since="AND event_time >= $since" if since else "",
                labels=_LABELS_SQL if label_keys else _NO_LABELS_SQL,
                limit="LIMIT $max_rows" if max_rows else "",
            )
            with _connect() as db:
                result = db.execute(sql, params)
                names = [d[0] for d in result.description]
                records = result.fetchall()
        features = [n for n in names if n not in {"event_id", "entity_id", "event_us", "label"}]
        rows = []
        for record in reversed(records):
            values = dict(zip(names, record, strict=True))
            rows.append(
                TrainingRow(
                    event_id=values["event_id"],
                    entity_id=values["entity_id"],
                    event_time=datetime.fromtimestamp(0, UTC) + timedelta(microseconds=values["event_us"]),
                    features={n: values[n] for n in features},
                    label=values["label"],
                )
            )
        return rows

    def migrate_legacy(self) -> MigrationReport:
        """Rewrite the JSON-lines segments of the old layout (``datasets/<view>/…/hour=…/part-P-O.jsonl``).

        Each segment becomes the files its batch would have been written to,
        under the same Kafka position, so running the migration again, or
        alongside a writer replaying the same batches, overwrites rather than
        duplicates. The old segments are left for the operator to remove.
        """
        segments = rows = 0
        for kind in ("vectors", "labels"):
            for key in self.store.list(f"datasets/{self.view}/{kind}/"):
                name = _LEGACY_NAME.search(key)
                if name is None:
                    continue
                records = [json.loads(line) for line in self.store.get(key).splitlines() if line.strip()]
                if not records:
                    continue
                batch = [_legacy_row(kind, r) for r in records]
                self._write(kind, batch, int(name.group(1)), int(name.group(2)))
                segments += 1
                rows += len(batch)
        return MigrationReport(segments=segments, rows=rows)


def _legacy_row(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    if kind == "vectors":
        return {
            **record,
            "event_time": datetime.fromisoformat(record["event_time"]),
            "occurred_at": datetime.fromisoformat(record["written_at"]),
        }
    # Old label segments kept no write time; a label was written when it became known.
    known = datetime.fromisoformat(record["label_time"])
    return {"event_id": record["event_id"], "label": record["label"], "label_time": known, "written_at": known}


def legacy_views(store: ArtifactStore) -> list[str]:
    """Feature views that still hold segments of the JSON-lines layout."""
    return sorted({key.split("/")[1] for key in store.list("datasets/") if key.endswith(".jsonl")})
