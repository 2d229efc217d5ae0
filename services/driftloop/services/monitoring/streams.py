"""The stateful stages: predictions and labels meet by event id, outcomes update each model's monitors.

Three stages, each working a batch at a time:

1. *route* (``routing.py``, on the bus): predictions and labels checked and
   re-keyed by event id onto the join topic.
2. *join*: one entry per event id in the ``pending`` table (``join.py``);
   the outcomes a record completes are sent, keyed by model, and acknowledged
   before the entries are written. Entries expire ``label_horizon`` of event
   time after they were first written; settled ones (labelled, scored,
   nothing waiting) sooner, beyond the newest ``settled_kept`` per partition.
3. *track*: each model's monitors (``domain.ModelTrack``) are one entry of
   the ``tracks`` table, read and written once per batch. The entry also
   holds how far each join partition's outcomes were applied, so a replayed
   outcome counts once. A failed drift-triggered run or a rejected
   challenger (from ``training.runs`` and ``registry.events``) reaches the
   track through the same topic, in order with the outcomes, and re-arms the
   monitor (``domain.ModelMonitor.rearm``), with a ``DriftUnresolved`` event.
   Champion moves and staged versions arrive the same way: the track runs
   each staged rollout's plan on the outcomes of both sides and publishes
   its start, steps and end on ``deployment.events``, which deployment
   follows to route and the registry to promote or withdraw. An abort that
   deployment decides (a challenger that does not load, or is too slow)
   reaches the track through that topic.

Beside them, data drift and the estimated accuracy need no labels: routing
also re-keys the feature vectors of each model's view and the champion's
predictions by model onto the ``rows`` topic, a batch of a source partition
per record, and each model's ``datawatch.DataWatch`` folds them in against its champion's
reference sample (``references.References``).

All state is JSON in changelog-backed tables (``driftloop.streams``): a
crash, a restart or a rebalance resumes from the changelog. The in-process
copies of the tracks are a cache, checked against the table's stamp before
use, and dropped whenever a batch of a partition fails.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from driftloop.bus import Bus, ConsumerLoop, PoisonMessage, Record
from driftloop.config import DriftloopConfig
from driftloop.contracts import (
    DriftDetected,
    DriftUnresolved,
    ModelPromoted,
    ModelRolledBack,
    ModelStaged,
    PromotionRejected,
    RolloutAborted,
    RolloutCompleted,
    RolloutStarted,
    RolloutStepped,
    TrainingRunFailed,
    parse_internal,
)
from driftloop.logging import get_logger
from driftloop.rollout import Progress, RolloutPlan, start
from driftloop.services.monitoring.datadrift import FeatureDrift
from driftloop.services.monitoring.datawatch import DataWatch, RowBatch
from driftloop.services.monitoring.domain import Detected, ModelTrack, Rearmed
from driftloop.services.monitoring.join import (
    JoinEntry,
    JoinExpiry,
    Outcome,
    PredictionRecord,
    SettledMarks,
    chunked,
    join,
    join_records,
)
from driftloop.services.monitoring.metrics import (
    DRIFTS,
    ESTIMATED_ACCURACY,
    ESTIMATED_LOWER,
    ESTIMATED_UPPER,
    EXPIRED_JOINS,
    OUTCOMES,
    PENDING_JOINS,
    ROLLING_ACCURACY,
    UNRESOLVED,
)
from driftloop.services.monitoring.references import References
from driftloop.services.monitoring.routing import JOIN_TOPIC, OUTCOMES_TOPIC, ROWS_TOPIC
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.streams import Table, Tables, create_internal

log = get_logger(__name__)

#: Drift events are named by what they report, so one found again after a replay has the same event id. A
#: concept drift is named by its version and its number on it: a replay applies a batch's outcomes in event
#: order, and batches cut elsewhere may tip the detector a few outcomes earlier or later.
_DRIFT_NAMESPACE = uuid.UUID("6f1d3c1e-3b0a-4c7e-9a53-2f0a5c7d9e11")
#: Drift events kept per model for the API.
_KEPT_DRIFTS = 20
#: What monitoring's rollout events give as the reporting ``instance``: the verdict is taken here.
ROLLOUT_INSTANCE = "monitoring"
#: The application the tables belong to: their changelogs are ``driftloop-monitoring-<table>-changelog``.
APP = "monitoring"

Rejected = list[tuple[Record, PoisonMessage]]


@dataclass
class MonitorStreams:
    pending: Table
    tracks: Table
    watches: Table
    #: A model's track as the table holds it, or None before its first outcome.
    track: Callable[[str], ModelTrack | None]
    #: A model's data watch as this replica last saw it, or None before its first rows.
    watch: Callable[[str], DataWatch | None]
    rolling_window: int
    #: The stages by name: join, track, rows, turns.
    loops: dict[str, ConsumerLoop]

    async def start(self, settings: MonitoringSettings) -> None:
        await create_internal(settings, JOIN_TOPIC, OUTCOMES_TOPIC, ROWS_TOPIC)
        for loop in self.loops.values():
            await loop.start()

    async def stop(self) -> None:
        for loop in self.loops.values():
            await loop.stop()

    def health(self) -> dict[str, bool | str]:
        return {name: loop.health() for name, loop in self.loops.items()}


def build(settings: MonitoringSettings, config: DriftloopConfig, bus: Bus, references: References) -> MonitorStreams:
    pending, tracks, watches = Table("pending"), Table("tracks"), Table("watches")
    policy = config.drift
    models = {m.name for m in config.models}
    horizon = settings.label_horizon.total_seconds()
    expiries: dict[int, JoinExpiry] = {}
    marks: dict[int, SettledMarks] = {}
    cache: dict[str, tuple[str, ModelTrack]] = {}

    def load(model: str) -> ModelTrack | None:
        stored = tracks.get(model)
        if stored is None:
            return None
        cached = cache.get(model)
        if cached is not None and cached[0] == stored["stamp"]:
            return cached[1]
        track = ModelTrack.from_dict(stored, model, policy)
        cache[model] = (stored["stamp"], track)
        return track

    watch_cache: dict[str, tuple[str, DataWatch]] = {}

    def cached_watch(model: str) -> DataWatch | None:
        """This replica's watch of ``model`` while no other replica has written one since; it may be ahead of
        the table by up to ``data_checkpoint_batches`` batches."""
        stored = watches.get(model)
        cached = watch_cache.get(model)
        if cached is not None and (stored is None or cached[0] == stored["stamp"]):
            return cached[1]
        if stored is None:
            return None
        version = stored["version"]
        reference = references.cached(model, version) if version is not None else None
        return DataWatch.from_dict(stored, model, reference, policy.data, policy.estimation)

    # Stage 1, routing, runs on its own loop (``routing.py``). Stage 2: join.

    def reindex(partition: int) -> None:
        """The partition's expiry and settled marks, from its committed entries."""
        found = [
            (key, JoinEntry.from_dict(value))
            for key, value in pending.partition_items(partition)
            if isinstance(value, dict) and "at" in value
        ]
        expiries[partition] = JoinExpiry(horizon)
        for key, entry in found:
            expiries[partition].track(key, entry.at)
        marks[partition] = SettledMarks.rebuilt(settings.settled_kept, found)

    async def on_join_batch(records: list[Record]) -> Rejected:
        partition = records[0].partition
        entries: dict[str, JoinEntry] = {}
        offsets: dict[str, int] = {}
        #: Each model's outcomes of the batch, as JSON, in the order they were completed.
        completed: dict[str, list[dict[str, Any]]] = {}
        latest: float | None = None
        rejected: Rejected = []
        for message in records:
            try:
                joined = join_records(message.value)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                rejected.append((message, PoisonMessage(f"not a join record: {exc!r}")))
                continue
            # An outcome is named by the record that completed it and its place among that record's outcomes.
            place = 0
            for record in joined:
                key = record.event_id
                entry = entries.get(key)
                if entry is None and (stored := pending.get(key)) is not None:
                    entry = JoinEntry.from_dict(stored)
                entry, found = join(entry, record, partition)
                entries[key], offsets[key] = entry, message.offset
                for outcome in found:
                    completed.setdefault(outcome.model, []).append(outcome.to_dict((partition, message.offset, place)))
                    place += 1
                at = record.event_time if isinstance(record, PredictionRecord) else record.label_time
                latest = at if latest is None else max(at, latest)
        # The loop has the outcomes acknowledged before the entries that say "scored" are sent: a crash in
        # between repeats the outcomes, which the tracker recognises by their source; the other order could
        # lose them. A model's outcomes of the batch travel together, in order.
        bus.defer(
            OUTCOMES_TOPIC,
            [(model.encode(), value, [], None) for model, mine in completed.items() for value in chunked(mine)],
        )
        expiry = expiries.setdefault(partition, JoinExpiry(horizon))
        settled_marks = marks.setdefault(partition, SettledMarks(settings.settled_kept))
        for key, entry in entries.items():
            newly_settled = entry.settle(offsets[key])
            pending[key] = entry.to_dict()
            expiry.track(key, entry.at)
            if newly_settled:
                settled_marks.mark(key, offsets[key])
        if latest is not None:
            gone = expiry.advance(latest)
            for key in gone:
                if key in pending:
                    del pending[key]
            EXPIRED_JOINS.inc(len(gone))
            for key in settled_marks.overflow():
                stored = pending.get(key)
                if stored is not None and JoinEntry.from_dict(stored).settled:
                    del pending[key]
                    expiry.forget(key)
        PENDING_JOINS.set(sum(len(e) for e in expiries.values()))
        return rejected

    # Stage 3: track.

    def drift_event(model: str, detected: Detected) -> DriftDetected:
        evidence = detected.evidence
        event_id = uuid.uuid5(_DRIFT_NAMESPACE, f"{model}:{detected.version}:drift:{detected.attempt}").hex
        return DriftDetected(
            event_id=event_id,
            correlation_id=event_id,
            model_name=model,
            model_version=detected.version,
            kind="concept",
            detector=evidence.detector,
            observations=evidence.observations,
            window=evidence.window,
            accuracy_before=evidence.accuracy_before,
            accuracy_after=evidence.accuracy_after,
            change_point_time=datetime.fromtimestamp(evidence.change_point_time, UTC),
            evidence={
                "error_rate": 1 - evidence.accuracy_after,
                "width": float(evidence.window),
                **evidence.statistics,
            },
        )

    def unresolved_event(model: str, rearmed: Rearmed, correlation_id: str, reason: str) -> DriftUnresolved:
        return DriftUnresolved(
            event_id=uuid.uuid5(_DRIFT_NAMESPACE, f"unresolved:{rearmed.drift_event_id}:{rearmed.attempts}").hex,
            correlation_id=correlation_id,
            causation_id=rearmed.drift_event_id,
            model_name=model,
            model_version=rearmed.version,
            drift_event_id=rearmed.drift_event_id,
            reason=reason,
            attempts=rearmed.attempts,
            rearm_after=rearmed.backoff,
        )

    def rollout_event(
        plan: RolloutPlan, progress: Progress | None, kind: str
    ) -> RolloutStarted | RolloutStepped | RolloutCompleted | RolloutAborted:
        """The event for a rollout's start or ``progress``; named by what it reports, so a replay repeats its id."""
        common: dict[str, Any] = {
            "event_id": uuid.uuid5(
                _DRIFT_NAMESPACE, f"rollout:{plan.model_name}:{plan.version}:{kind}:{plan.stage}"
            ).hex,
            "correlation_id": plan.correlation_id,
            "model_name": plan.model_name,
            "version": plan.version,
            "previous_version": plan.champion_version,
            "strategy": plan.strategy,
            "instance": ROLLOUT_INSTANCE,
        }
        evidence = progress.verdict.evidence() if progress is not None and progress.verdict is not None else {}
        if kind == "started":
            return RolloutStarted(**common, percent=plan.percent)
        if kind == "stepped":
            previous = plan.stages[plan.stage - 1].percent
            return RolloutStepped(
                **common, step=plan.stage, percent=plan.percent, previous_percent=previous, evidence=evidence
            )
        if kind == "completed":
            return RolloutCompleted(**common, evidence=evidence)
        return RolloutAborted(**common, reason=plan.reason or "aborted", evidence=evidence)

    def control(
        track: ModelTrack, data: dict[str, Any]
    ) -> list[RolloutStarted | RolloutStepped | RolloutCompleted | RolloutAborted]:
        """A record the track takes in order with the outcomes: a champion named, a version staged, an abort."""
        kind = data["k"]
        if kind == "champion":
            track.name_champion(int(data["v"]))
            return []
        if kind == "abort":
            track.withdraw(int(data["v"]), data["r"])
            return []
        version = int(data["v"])
        if track.rollout is not None and track.rollout.version >= version:
            return []
        policy = config.rollout_for(track.model_name)
        now = datetime.fromtimestamp(time.time(), UTC)
        plan = start(policy, track.model_name, version, int(data["cv"]), data["c"], now)
        published = []
        superseded = track.begin(plan)
        if superseded is not None:
            ended = replace(superseded, status="aborted", reason=f"superseded by v{version}")
            published.append(rollout_event(ended, None, "aborted"))
        published.append(rollout_event(plan, None, "started"))
        if plan.status == "completed":
            published.append(rollout_event(plan, None, "completed"))
        log.info("rollout begun", model=track.model_name, version=version, strategy=plan.strategy)
        return published

    async def on_outcomes(records: list[Record]) -> Rejected:
        touched: dict[str, ModelTrack] = {}
        rejected: Rejected = []
        counted: Counter[tuple[str, bool]] = Counter()
        drifts: list[DriftDetected] = []
        unresolved: list[DriftUnresolved] = []
        rollouts: list[RolloutStarted | RolloutStepped | RolloutCompleted | RolloutAborted] = []

        def track_of(model: str) -> ModelTrack:
            if model not in touched:
                touched[model] = load(model) or ModelTrack(model, policy)
            return touched[model]

        def apply(outcomes: list[Outcome]) -> None:
            by_model: dict[str, list[Outcome]] = {}
            for outcome in outcomes:
                by_model.setdefault(outcome.model, []).append(outcome)
            for model, mine in by_model.items():
                track = track_of(model)
                for outcome in track.in_event_order(mine):
                    detected = track.apply(outcome)
                    counted[(model, outcome.correct)] += 1
                    if detected is not None:
                        drift = drift_event(model, detected)
                        drifts.append(drift)
                        track.drifts = [*track.drifts, drift.model_dump(mode="json")][-_KEPT_DRIFTS:]
            outcomes.clear()

        # The outcomes between two control records are applied together, in event order (``in_event_order``);
        # a control record (a re-arm, a champion named, a version staged, an abort) takes effect where it stands.
        waiting: list[Outcome] = []
        for record in records:
            try:
                data = orjson.loads(record.value)
                if isinstance(data, list):
                    waiting += [Outcome.from_dict(item) for item in data]
                    continue
                if data.get("k") not in ("rearm", "champion", "stage", "abort"):
                    waiting.append(Outcome.from_dict(data))
                    continue
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                rejected.append((record, PoisonMessage(f"not an outcome: {exc!r}")))
                continue
            apply(waiting)
            try:
                if data["k"] == "rearm":
                    rearmed = track_of(data["m"]).rearm(data["c"])
                    if rearmed is not None:
                        unresolved.append(unresolved_event(data["m"], rearmed, data["c"], data["r"]))
                else:
                    rollouts += control(track_of(data["m"]), data)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                rejected.append((record, PoisonMessage(f"not an outcome: {exc!r}")))
        apply(waiting)
        for (model, correct), count in counted.items():
            OUTCOMES.labels(model, str(correct).lower()).inc(count)
        looked_at = datetime.fromtimestamp(time.time(), UTC)
        for model, track in touched.items():
            progress = track.look(config.rollout_for(model), looked_at)
            if progress is not None and progress.transition != "none":
                rollouts.append(rollout_event(progress.plan, progress, progress.transition))
                log.info(
                    "rollout " + progress.transition,
                    model=model,
                    version=progress.plan.version,
                    percent=progress.plan.percent,
                    reason=progress.plan.reason,
                    outcomes=track.tally.to_dict(),
                )
        for rollout in rollouts:
            await bus.publish(rollout, rollout.model_name, wait=False)
        for drift in drifts:
            await bus.publish(drift, drift.model_name, wait=False)
            DRIFTS.labels(drift.model_name, "concept").inc()
            log.warning(
                "drift detected",
                model=drift.model_name,
                version=drift.model_version,
                before=drift.accuracy_before,
                after=drift.accuracy_after,
                observations=drift.observations,
            )
        for notice in unresolved:
            await bus.publish(notice, notice.model_name, wait=False)
            log.warning(
                "drift unresolved; monitor re-armed",
                model=notice.model_name,
                version=notice.model_version,
                reason=notice.reason,
                attempts=notice.attempts,
                rearm_after=notice.rearm_after,
            )
        now = time.time()
        for model, track in touched.items():
            track.sample(now)
            stamp = uuid.uuid4().hex
            tracks[model] = {**track.to_dict(), "stamp": stamp}
            cache[model] = (stamp, track)
            if (current := track.current) is not None:
                UNRESOLVED.labels(model).set(int(current.unresolved))
                if current.rolling_accuracy is not None:
                    ROLLING_ACCURACY.labels(model).set(current.rolling_accuracy)
        return rejected

    def forwarded(event: object) -> dict[str, Any] | None:
        """What of a registry or deployment event the track takes in order with the outcomes."""
        if isinstance(event, ModelPromoted):
            return {"k": "champion", "m": event.model_name, "v": event.version}
        if isinstance(event, ModelRolledBack):
            return {"k": "champion", "m": event.model_name, "v": event.to_version}
        if isinstance(event, ModelStaged):
            return {
                "k": "stage",
                "m": event.model_name,
                "v": event.version,
                "cv": event.champion_version,
                "c": event.correlation_id,
            }
        if isinstance(event, RolloutAborted) and event.instance != ROLLOUT_INSTANCE:
            return {"k": "abort", "m": event.model_name, "v": event.version, "r": event.reason}
        return None

    async def on_turn_ended(records: list[Record]) -> Rejected:
        """Failed drift runs, rejected challengers, champion moves, staged versions and deployment's aborts,
        forwarded to their model's track."""
        for message in records:
            try:
                ended = parse_internal(message.value)
            except ValueError:
                continue  # other services' records; theirs to dead-letter
            if (record := forwarded(ended)) is not None:
                if record["m"] in models:
                    await bus.send(OUTCOMES_TOPIC, orjson.dumps(record), record["m"], [], wait=False)
                continue
            if isinstance(ended, TrainingRunFailed) and ended.trigger == "drift":
                reason = f"training run {ended.run_id} failed: {ended.error}"
            elif isinstance(ended, PromotionRejected):
                reason = f"challenger v{ended.version} rejected: {ended.decision.reason}"
            else:
                continue
            rearm = {"k": "rearm", "m": ended.model_name, "c": ended.correlation_id, "r": reason}
            await bus.send(OUTCOMES_TOPIC, orjson.dumps(rearm), ended.model_name, [], wait=False)
        return []

    # Beside the track: data drift and the estimated accuracy.

    async def watch_of(model: str) -> DataWatch:
        stored = watches.get(model)
        cached = watch_cache.get(model)
        if cached is not None and (stored is None or cached[0] == stored["stamp"]):
            return cached[1]
        if stored is None:
            return DataWatch(model, policy.data, policy.estimation)
        version = stored["version"]
        reference = await references.reference(model, version) if version is not None else None
        return DataWatch.from_dict(stored, model, reference, policy.data, policy.estimation)

    def data_drift_event(watch: DataWatch, observations: int, finding: FeatureDrift) -> DriftDetected:
        version = watch.version or 0
        name = f"{watch.model_name}:{version}:{finding.feature}:{observations}"
        event_id = uuid.uuid5(_DRIFT_NAMESPACE, name).hex
        return DriftDetected(
            event_id=event_id,
            correlation_id=event_id,
            model_name=watch.model_name,
            model_version=version,
            kind="data",
            feature=finding.feature,
            detector=f"{finding.statistic}(alpha={policy.data.alpha}, min_psi={policy.data.min_psi})",
            observations=observations,
            window=finding.window_rows,
            evidence=finding.evidence(),
        )

    unsaved: dict[str, int] = {}

    async def on_rows(records: list[Record]) -> Rejected:
        touched: dict[str, DataWatch] = {}
        urgent: set[str] = set()
        rejected: Rejected = []
        now = time.time()
        for record in records:
            try:
                batch = RowBatch.from_dict(orjson.loads(record.value))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                rejected.append((record, PoisonMessage(f"not a row batch: {exc!r}")))
                continue
            model = batch.model
            if model not in touched:
                touched[model] = await watch_of(model)
            watch = touched[model]
            champion = references.champion(model)
            if champion is not None and champion != watch.version:
                watch.switch(champion, await references.reference(model, champion))
                urgent.add(model)
            for observations, finding in watch.apply(batch, at=now):
                drift = data_drift_event(watch, observations, finding)
                await bus.publish(drift, model, wait=False)
                watch.history.keep_drift(drift.model_dump(mode="json"))
                DRIFTS.labels(model, "data").inc()
                log.warning("data drift detected", model=model, version=drift.model_version, feature=drift.feature)
                urgent.add(model)
        for model, watch in touched.items():
            unsaved[model] = unsaved.get(model, 0) + 1
            if model in urgent or unsaved[model] >= settings.data_checkpoint_batches:
                stamp = uuid.uuid4().hex
                watches[model] = {**watch.to_dict(), "stamp": stamp}
                watch_cache[model] = (stamp, watch)
                unsaved[model] = 0
            else:
                stored = watches.get(model)
                watch_cache[model] = (stored["stamp"] if stored else "", watch)
            if (estimate := watch.estimate()) is not None:
                ESTIMATED_ACCURACY.labels(model).set(estimate.accuracy)
                ESTIMATED_LOWER.labels(model).set(estimate.lower)
                ESTIMATED_UPPER.labels(model).set(estimate.upper)
        return rejected

    def forget_tracks(partition: int) -> None:
        cache.clear()

    def forget_watches(partition: int) -> None:
        watch_cache.clear()
        unsaved.clear()

    def stage(
        name: str,
        topics: list[str],
        handler: Callable[[list[Record]], Awaitable[Rejected]],
        tables: Tables | None,
    ) -> ConsumerLoop:
        return ConsumerLoop(
            settings,
            bus,
            service="monitoring",
            topics=topics,
            group=f"monitoring-{name}",
            stage=f"monitoring.{'outcomes' if name == 'track' else name}",
            batch_handler=handler,
            state=tables,
            batch_size=settings.batch,
            linger_seconds=settings.batch_within,
            # Join records, outcomes and rows carry no event id: the stages' tables recognise repeats.
            dedupe_key=None if tables is not None else (lambda record: record.event_id),
        )

    return MonitorStreams(
        pending=pending,
        tracks=tracks,
        watches=watches,
        track=load,
        watch=cached_watch,
        rolling_window=policy.accuracy_window,
        loops={
            "join": stage("join", [JOIN_TOPIC], on_join_batch, Tables(settings, APP, pending, reindex=reindex)),
            "track": stage(
                "track", [OUTCOMES_TOPIC], on_outcomes, Tables(settings, APP, tracks, reindex=forget_tracks)
            ),
            "rows": stage("rows", [ROWS_TOPIC], on_rows, Tables(settings, APP, watches, reindex=forget_watches)),
            "turns": stage("turns", ["training.runs", "registry.events", "deployment.events"], on_turn_ended, None),
        },
    )
