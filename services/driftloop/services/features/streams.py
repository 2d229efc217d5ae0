"""The faust agents: validated events -> vectors (online store), vectors and labels -> offline store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust

from driftloop.artifacts import ArtifactStore
from driftloop.config import DriftloopConfig
from driftloop.contracts import EventValidated, FeatureVector, LabelEvent
from driftloop.metrics import MESSAGES_CONSUMED
from driftloop.offline import OfflineStore, view_feature_types
from driftloop.services.features.domain import EntityState
from driftloop.services.features.settings import FeaturesSettings
from driftloop.streams import Emitter, batches, raw_topic, settled, state_table, stream_app


@dataclass
class FeatureStreams:
    app: faust.App
    #: entity_id -> {"state": the running aggregates, "views": {view name: latest vector}}.
    entities: faust.types.TableT[Any, Any]

    def latest(self, entity_id: str) -> dict[str, Any] | None:
        """The entity's latest vector per view, as JSON, or None before its first event."""
        entry = self.entities.get(entity_id)
        return entry.get("views") if entry else None


def build(settings: FeaturesSettings, config: DriftloopConfig, store: ArtifactStore) -> FeatureStreams:
    app = stream_app(settings, "features")
    emitter = Emitter(app, settings)
    # One entry per entity holds both its state and its latest vectors: one changelog record per entity and batch.
    entities = state_table(app, "entities", batched=True)
    offline = {v.name: OfflineStore(store, v.name, view_feature_types(config, v.name)) for v in config.feature_views}

    async def on_batch(batch: Sequence[tuple[faust.EventT[Any], EventValidated]]) -> None:
        """Fold a batch into the entities' state: each entity's state is read and written once per batch.

        Tables are written only after the broker acknowledged every vector of
        the batch, so a batch that fails half-way changed no state and can be
        redone, whole or in halves.
        """
        states: dict[str, EntityState] = {}
        latest: dict[str, dict[str, Any]] = {}
        vectors: list[tuple[FeatureVector, str]] = []
        fresh: dict[str, dict[str, FeatureVector]] = {}
        duplicates = 0
        for _, validated in batch:
            entity = validated.entity_id
            if entity not in states:
                stored = entities.get(entity) or {}
                states[entity] = EntityState.from_dict(stored.get("state"))
                latest[entity] = dict(stored.get("views") or {})
            state = states[entity]
            if not state.observe(validated.event_id, validated.features):
                duplicates += 1
                continue
            views = fresh.setdefault(entity, {})
            for view in config.feature_views:
                out = FeatureVector(
                    event_id=validated.event_id,
                    correlation_id=validated.correlation_id,
                    causation_id=validated.event_id,
                    entity_id=entity,
                    event_time=validated.event_time,
                    feature_view=view.name,
                    features=state.vector(view, config.passthrough(view), validated.features),
                    label=validated.label,
                )
                vectors.append((out, entity))
                views[view.name] = out
        await emitter.emit_all(vectors)
        for entity, views in fresh.items():
            latest[entity].update({name: vector.model_dump(mode="json") for name, vector in views.items()})
            entities[entity] = {"state": states[entity].to_dict(), "views": latest[entity]}
        MESSAGES_CONSUMED.labels("features", "events.validated", "duplicate").inc(duplicates)
        MESSAGES_CONSUMED.labels("features", "events.validated", "ok").inc(len(batch) - duplicates)

    @app.agent(raw_topic(app, settings, "events.validated"))
    async def compute(stream: faust.StreamT[Any]) -> None:
        async for events in batches(app, stream, settings.compute_batch, settings.compute_within):
            await emitter.guard_parsed(await settled(app, events), EventValidated, "features.compute", on_batch)

    async def append_vectors(batch: Sequence[tuple[faust.EventT[Any], FeatureVector]]) -> None:
        """Append the vectors to their views' datasets; a retry writes the same files again, not new rows."""
        vectors: dict[str, list[FeatureVector]] = {}
        for _, vector in batch:
            vectors.setdefault(vector.feature_view, []).append(vector)
        first = batch[0][0].message
        for view, rows in vectors.items():
            if view in offline:
                # Parquet encoding and the object store's round trip stay off the event loop.
                await asyncio.to_thread(offline[view].append_vectors, rows, first.partition, first.offset)

    async def append_labels(batch: Sequence[tuple[faust.EventT[Any], LabelEvent]]) -> None:
        labels = [label for _, label in batch]
        first = batch[0][0].message
        for store_ in offline.values():
            await asyncio.to_thread(store_.append_labels, labels, first.partition, first.offset)

    @app.agent(raw_topic(app, settings, "features"))
    async def write_offline(stream: faust.StreamT[Any]) -> None:
        async for events in batches(app, stream, settings.offline_batch, settings.offline_flush_seconds):
            await emitter.guard_parsed(events, FeatureVector, "features.offline", append_vectors)
            MESSAGES_CONSUMED.labels("features", "features", "ok").inc(len(events))

    @app.agent(raw_topic(app, settings, "labels"))
    async def write_labels(stream: faust.StreamT[Any]) -> None:
        async for events in batches(app, stream, settings.offline_batch, settings.offline_flush_seconds):
            await emitter.guard_parsed(events, LabelEvent, "features.labels", append_labels)
            MESSAGES_CONSUMED.labels("features", "labels", "ok").inc(len(events))

    return FeatureStreams(app=app, entities=entities)
