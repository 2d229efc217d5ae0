"""The faust agents: join predictions with labels by event id, then track each model's monitor.

Predictions (key ``source_event_id``) and labels (key ``event_id``) are
co-partitioned, so the join table lives where both arrive. Outcomes are then
re-keyed by model name onto an internal topic, so one model's monitor is
updated by one worker.

Join entries expire ``label_horizon`` of event time after they were first
written (``JoinExpiry``, per partition): each entry carries its stamp and
partition, so the expiry index is rebuilt from the table after a recovery,
and an expired entry is deleted from the table, which writes a tombstone to
its changelog.
"""

from __future__ import annotations

import base64
import json
import pickle
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner

from driftloop.config import DriftloopConfig
from driftloop.contracts import DriftDetected, LabelEvent, Prediction
from driftloop.contracts.events import LabelValue
from driftloop.logging import get_logger
from driftloop.services.monitoring.domain import JoinExpiry, ModelMonitor
from driftloop.services.monitoring.metrics import DRIFTS, EXPIRED_JOINS, OUTCOMES, PENDING_JOINS, ROLLING_ACCURACY
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.streams import PARTITIONS, Emitter, parse, raw_topic, state_table, stream_app

log = get_logger(__name__)


@dataclass
class MonitorStreams:
    app: faust.App
    pending: faust.types.TableT[Any, Any]
    monitors: dict[str, ModelMonitor] = field(default_factory=dict)
    drifts: dict[str, list[DriftDetected]] = field(default_factory=dict)


def _encode(monitor: ModelMonitor) -> str:
    return base64.b64encode(pickle.dumps(monitor)).decode()


def _decode(blob: str) -> ModelMonitor:
    monitor: ModelMonitor = pickle.loads(base64.b64decode(blob))
    return monitor


def build(settings: MonitoringSettings, config: DriftloopConfig) -> MonitorStreams:
    app = stream_app(settings, "monitoring")
    emitter = Emitter(app, settings)
    pending = state_table(app, "pending")
    streams = MonitorStreams(app=app, pending=pending)
    stored = state_table(app, "monitors")
    outcomes = raw_topic(app, settings, "driftloop-monitoring-outcomes", internal=True)
    relabelled = raw_topic(app, settings, "driftloop-monitoring-labels-by-event", internal=True)
    partitioner = DefaultPartitioner()
    policy = config.drift
    since_checkpoint: dict[str, int] = {}
    horizon = settings.label_horizon.total_seconds()
    expiries: dict[int, JoinExpiry] = {}

    def put(key: str, value: dict[str, Any], at: float, partition: int) -> None:
        """Write a join entry stamped with the event time it was first written at."""
        first = (pending.get(key) or {}).get("at", at)
        pending[key] = {**value, "at": first, "p": partition}
        expiries.setdefault(partition, JoinExpiry(horizon)).track(key, first)

    def expire(partition: int, at: float) -> None:
        """Advance the partition's stream time; runs while handling an event of that partition, so the
        tombstones go to the changelog partition the entries were written to."""
        keys = expiries.setdefault(partition, JoinExpiry(horizon)).advance(at)
        for key in keys:
            if key in pending:
                del pending[key]
        EXPIRED_JOINS.inc(len(keys))
        PENDING_JOINS.set(len(pending))

    @pending.on_recover
    async def reindex() -> None:
        expiries.clear()
        for key, value in pending.items():
            if isinstance(value, dict) and "at" in value:
                expiries.setdefault(value["p"], JoinExpiry(horizon)).track(key, value["at"])

    async def score(prediction: dict[str, Any], label: LabelValue) -> None:
        outcome = {**prediction, "correct": prediction["prediction"] == label}
        await outcomes.send(key=prediction["model_name"].encode(), value=json.dumps(outcome).encode())

    async def on_prediction(event: faust.EventT[Any]) -> None:
        prediction = parse(Prediction, event.value)
        if prediction.role != "champion":
            return
        event_time = prediction.event_time or prediction.occurred_at
        at, partition = event_time.timestamp(), event.message.partition
        await join_prediction(prediction, event_time, at, partition)
        expire(partition, at)

    async def join_prediction(prediction: Prediction, event_time: datetime, at: float, partition: int) -> None:
        key = f"{prediction.model_name}:{prediction.source_event_id}"
        if (pending.get(key) or {}).get("scored"):
            return
        compact = {
            "model_name": prediction.model_name,
            "model_version": prediction.model_version,
            "prediction": prediction.prediction,
            "event_time": event_time.isoformat(),
            "source_event_id": prediction.source_event_id,
        }
        event_entry = pending.get(prediction.source_event_id) or {}
        label = prediction.label if prediction.label is not None else event_entry.get("label")
        if label is None:
            put(key, {"prediction": compact}, at, partition)
            waiting = [*event_entry.get("waiting", []), key]
            put(prediction.source_event_id, {**event_entry, "waiting": waiting}, at, partition)
            return
        await score(compact, label)
        put(key, {"scored": True}, at, partition)

    async def join_label(label: LabelEvent, message: faust.types.Message) -> None:
        """A label without ``label_time`` is stamped with its record's timestamp, when it was produced."""
        at, partition = label.label_time.timestamp() if label.label_time else message.timestamp, message.partition
        entry = pending.get(label.event_id) or {}
        waiting = entry.get("waiting", [])
        for key in waiting:
            held = pending.get(key) or {}
            if "prediction" in held:
                await score(held["prediction"], label.label)
                put(key, {"scored": True}, at, partition)
        put(label.event_id, {"label": label.label, "waiting": []}, at, partition)
        expire(partition, at)

    @app.agent(raw_topic(app, settings, "predictions"))
    async def join_predictions(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await emitter.guard(event, "monitoring.predictions", on_prediction)

    async def route_label(event: faust.EventT[Any]) -> None:
        """Join a label where its prediction is, re-keying it first if the producer put it elsewhere.

        Predictions are keyed by event id with the Java/aiokafka partitioner;
        a label keyed differently, or by a client with another partitioner,
        lands on another partition than its prediction and takes one detour.
        """
        label = parse(LabelEvent, event.value)
        key = label.event_id.encode()
        if event.message.partition == partition_of(key):
            await join_label(label, event.message)
        else:
            await relabelled.send(key=key, value=event.value)

    def partition_of(key: bytes) -> int:
        """Where a producer using the default partitioner puts ``key`` (topics have the catalog's partitions)."""
        partitions = list(range(PARTITIONS))
        return int(partitioner(key, partitions, partitions))

    @app.agent(raw_topic(app, settings, "labels"))
    async def join_labels(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await emitter.guard(event, "monitoring.labels", route_label)

    @app.agent(relabelled)
    async def join_relabelled(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await emitter.guard(event, "monitoring.labels", lambda e: join_label(parse(LabelEvent, e.value), e.message))

    def monitor_for(model: str, version: int) -> ModelMonitor:
        monitor = streams.monitors.get(model)
        if monitor is None and (blob := stored.get(model)):
            monitor = _decode(blob)
        if monitor is None or monitor.version != version:
            monitor = ModelMonitor(model, version, policy.delta, policy.grace_observations, policy.accuracy_window)
        streams.monitors[model] = monitor
        return monitor

    async def on_outcome(event: faust.EventT[Any]) -> None:
        outcome = json.loads(event.value)
        model, version = outcome["model_name"], int(outcome["model_version"])
        monitor = monitor_for(model, version)
        evidence = monitor.update(bool(outcome["correct"]), datetime.fromisoformat(outcome["event_time"]))
        OUTCOMES.labels(model, str(outcome["correct"]).lower()).inc()
        if monitor.rolling_accuracy is not None:
            ROLLING_ACCURACY.labels(model).set(monitor.rolling_accuracy)
        since_checkpoint[model] = since_checkpoint.get(model, 0) + 1
        if evidence is not None:
            drift = DriftDetected(
                causation_id=outcome["source_event_id"],
                model_name=model,
                model_version=version,
                kind="concept",
                detector=f"adwin(delta={policy.delta})",
                observations=evidence.observations,
                window=evidence.window,
                accuracy_before=evidence.accuracy_before,
                accuracy_after=evidence.accuracy_after,
                change_point_time=evidence.change_point_time,
                evidence={"error_rate": 1 - evidence.accuracy_after, "width": float(evidence.window)},
            )
            await emitter.emit(drift, model)
            streams.drifts.setdefault(model, []).append(drift)
            DRIFTS.labels(model, "concept").inc()
            log.warning(
                "drift detected",
                model=model,
                version=version,
                before=evidence.accuracy_before,
                after=evidence.accuracy_after,
                observations=evidence.observations,
            )
        if evidence is not None or since_checkpoint[model] >= settings.checkpoint_every:
            stored[model] = _encode(monitor)
            since_checkpoint[model] = 0

    @app.agent(outcomes)
    async def track(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await emitter.guard(event, "monitoring.outcomes", on_outcome)

    return streams
