"""The stages: validated events -> vectors (online store), vectors and labels -> offline store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from driftloop.artifacts import ArtifactStore
from driftloop.bus import Bus, ConsumerLoop, PoisonMessage, Record
from driftloop.bus.reader import ContractReader
from driftloop.config import DriftloopConfig
from driftloop.contracts import EventValidated, FeatureVector, LabelEvent, topic_for, utcnow
from driftloop.offline import OfflineStore, view_feature_types
from driftloop.services.features.domain import EntityState
from driftloop.services.features.settings import FeaturesSettings
from driftloop.streams import Table, Tables

Rejected = list[tuple[Record, PoisonMessage]]
Handler = Callable[[list[Record]], Awaitable[Rejected]]


@dataclass
class FeatureStreams:
    #: entity_id -> {"state": the running aggregates, "views": {view name: latest vector}}.
    entities: Table
    tables: Tables
    #: The stages by name: compute, offline (vectors) and labels.
    loops: dict[str, ConsumerLoop]

    def latest(self, entity_id: str) -> dict[str, Any] | None:
        """The entity's latest vector per view, as JSON, or None before its first event."""
        entry = self.entities.get(entity_id)
        return entry.get("views") if entry else None

    async def start(self) -> None:
        for loop in self.loops.values():
            await loop.start()

    async def stop(self) -> None:
        for loop in self.loops.values():
            await loop.stop()

    def health(self) -> dict[str, bool | str]:
        return {name: loop.health() for name, loop in self.loops.items()}


def build(settings: FeaturesSettings, config: DriftloopConfig, bus: Bus, store: ArtifactStore) -> FeatureStreams:
    # One entry per entity holds both its state and its latest vectors: one changelog record per entity and batch.
    entities = Table("entities")
    tables = Tables(settings, "features", entities)
    offline = {v.name: OfflineStore(store, v.name, view_feature_types(config, v.name)) for v in config.feature_views}
    events, vectors, labels = ContractReader(EventValidated), ContractReader(FeatureVector), ContractReader(LabelEvent)
    #: Each view with the features it passes through, listed once rather than for every event.
    views = [(view, config.passthrough(view)) for view in config.feature_views]

    async def compute(records: list[Record]) -> Rejected:
        """Fold a batch into the entities' state: each entity's state is read and written once per batch.

        The vectors of a view differ only in a few fields, so they are encoded from one validated
        template (``Bus.encode_many``) and leave with the batch's acknowledgement.
        """
        batch, rejected = events.read_all(records)
        now = utcnow()
        states: dict[str, EntityState] = {}
        latest: dict[str, dict[str, Any]] = {}
        observed: set[str] = set()
        changes: dict[str, list[dict[str, Any]]] = {view.name: [] for view in config.feature_views}
        for _, validated in batch:
            entity = validated["entity_id"]
            if entity not in states:
                stored = entities.get(entity) or {}
                states[entity] = EntityState.from_dict(stored.get("state"))
                latest[entity] = dict(stored.get("views") or {})
            state = states[entity]
            event_id, features = validated["event_id"], validated["features"]
            if not state.observe(event_id, features):
                continue
            observed.add(entity)
            for view, passthrough in views:
                # Every value comes from a validated event or the entity's state: nothing to validate again.
                changes[view.name].append(
                    {
                        "event_id": event_id,
                        "correlation_id": validated["correlation_id"],
                        "causation_id": event_id,
                        "entity_id": entity,
                        "event_time": validated["event_time"],
                        "features": state.vector(view, passthrough, features),
                        "label": validated["label"],
                    }
                )
        for view_name, view_changes in changes.items():
            if not view_changes:
                continue
            template = FeatureVector(**view_changes[0], occurred_at=now, feature_view=view_name)
            encoded = bus.encode_many(template, view_changes, [change["entity_id"] for change in view_changes])
            bus.defer(topic_for(FeatureVector), encoded)
            # An entity's newest vector is the last one encoded for it; only that one is read back.
            newest = {
                change["entity_id"]: value for change, (_, value, _, _) in zip(view_changes, encoded, strict=True)
            }
            for entity, value in newest.items():
                assert value is not None, "encode_many gives every record a value"
                latest[entity][view_name] = orjson.loads(value)
        for entity in observed:
            entities[entity] = {"state": states[entity].to_dict(), "views": latest[entity]}
        return rejected

    async def append_vectors(records: list[Record]) -> Rejected:
        """Append the vectors to their views' datasets; a retry writes the same files again, not new rows."""
        batch, rejected = vectors.read_all(records)
        by_view: dict[str, list[dict[str, Any]]] = {}
        for _, vector in batch:
            by_view.setdefault(vector["feature_view"], []).append(vector)
        first = records[0]
        for view, rows in by_view.items():
            if view in offline:
                # Parquet encoding and the object store's round trip stay off the event loop.
                await asyncio.to_thread(offline[view].append_vectors, rows, first.partition, first.offset)
        return rejected

    async def append_labels(records: list[Record]) -> Rejected:
        batch, rejected = labels.read_all(records)
        rows = [label for _, label in batch]
        first = records[0]
        if rows:
            for store_ in offline.values():
                await asyncio.to_thread(store_.append_labels, rows, first.partition, first.offset)
        return rejected

    def stage(name: str, topic: str, handler: Handler, size: int, linger: float, state: Tables | None) -> ConsumerLoop:
        # A stage dedupes by its own state (an entity's recent event ids), or rewrites the same files on a replay.
        return ConsumerLoop(
            settings,
            bus,
            service="features",
            topics=[topic],
            group="features" if name == "compute" else f"features-{name}",
            stage=f"features.{name}",
            batch_handler=handler,
            state=state,
            batch_size=size,
            linger_seconds=linger,
            dedupe_key=None,
        )

    flush = settings.offline_flush_seconds
    loops = {
        name: stage(name, topic, handler, size, linger, state)
        for name, topic, handler, size, linger, state in [
            ("compute", "events.validated", compute, settings.compute_batch, settings.compute_within, tables),
            ("offline", "features", append_vectors, settings.offline_batch, flush, None),
            ("labels", "labels", append_labels, settings.offline_batch, flush, None),
        ]
    }
    return FeatureStreams(entities=entities, tables=tables, loops=loops)
