"""Offline store figures: the time to build a training set over a one-day window versus the whole history.

Run with ``python -m tests.bench.bench_offline [--days 30] [--rows-per-day 20000]``. Nothing here
asserts a time: the figures are for reading and comparing across changes on the same machine.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from driftloop.artifacts import LocalArtifactStore
from driftloop.contracts import FeatureVector, LabelEvent
from driftloop.offline import FeatureType, OfflineStore

TYPES: dict[str, FeatureType] = {
    "salary": "float",
    "commission": "float",
    "age": "int",
    "elevel": "int",
    "car": "int",
    "zipcode": "int",
    "hvalue": "float",
    "hyears": "int",
    "loan": "float",
    "entity_count": "float",
    "entity_mean_loan": "float",
}
#: The size of one writer batch (the features service's ``offline_batch``).
BATCH = 5000


def fill(offline: OfflineStore, days: int, per_day: int, end: datetime) -> None:
    """Half the rows carry their label; the other half get it later, as a label event."""
    rng = random.Random(0)
    start = end - timedelta(days=days)
    step = timedelta(days=1) / per_day
    offset = 0
    for first in range(0, days * per_day, BATCH):
        vectors, labels = [], []
        for i in range(first, min(first + BATCH, days * per_day)):
            event_time = start + step * i
            features = {n: rng.random() * 1000 if t == "float" else rng.randrange(100) for n, t in TYPES.items()}
            late = i % 2 == 1
            vectors.append(
                FeatureVector(
                    event_id=f"e{i}",
                    entity_id=f"c{i % 5000}",
                    event_time=event_time,
                    feature_view="applications",
                    features=features,
                    label=None if late else i % 3 % 2,
                    occurred_at=event_time + timedelta(seconds=1),
                )
            )
            if late:
                labels.append(LabelEvent(event_id=f"e{i}", label=i % 2, label_time=event_time + timedelta(minutes=5)))
        offline.append_vectors([v.model_dump() for v in vectors], partition=0, first_offset=offset)
        offline.append_labels([label.model_dump() for label in labels], partition=0, first_offset=offset)
        offset += len(vectors)


def timed(label: str, offline: OfflineStore, as_of: datetime, since: datetime | None, max_rows: int | None) -> None:
    started = time.perf_counter()
    rows = offline.training_set(as_of=as_of, since=since, max_rows=max_rows, max_event_age=timedelta(days=1))
    elapsed = time.perf_counter() - started
    print(f"{label:<44} {len(rows):>9,} rows  {elapsed:8.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows-per-day", type=int, default=20_000)
    args = parser.parse_args()
    end = datetime(2026, 3, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-offline-") as root:
        offline = OfflineStore(LocalArtifactStore(Path(root)), "applications", TYPES)
        started = time.perf_counter()
        fill(offline, args.days, args.rows_per_day, end)
        elapsed = time.perf_counter() - started
        files = sum(1 for p in Path(root).rglob("*.parquet"))
        total = args.days * args.rows_per_day
        print(f"wrote {total:,} vectors (+ labels) in {files:,} Parquet files: {total / elapsed:,.0f} vectors/s")
        day = end - timedelta(days=1)
        timed("1-day window, newest 4,000 rows", offline, end, day, 4000)
        timed("1-day window, all rows", offline, end, day, None)
        timed("full history, newest 4,000 rows", offline, end, None, 4000)
        timed("full history, all rows", offline, end, None, None)


if __name__ == "__main__":
    main()
