"""Features in, predictions out; registry events in, rollouts out."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from pydantic import ValidationError

from driftloop.aliases import Target
from driftloop.artifacts import ArtifactStore, read_verified
from driftloop.bus import Bus, PoisonMessage, Record
from driftloop.bus.reader import ContractReader
from driftloop.config import DriftloopConfig
from driftloop.contracts import (
    Envelope,
    FeatureVector,
    ModelPromoted,
    ModelRolledBack,
    ModelStaged,
    Prediction,
    PromotionRejected,
    RolloutAborted,
    RolloutCompleted,
    RolloutStarted,
    RolloutStepped,
    new_event_ids,
    parse_internal,
    topic_for,
    utcnow,
)
from driftloop.logging import get_logger
from driftloop.modeling import ModelArtifact
from driftloop.services.deployment.domain import LatencyWatch, RolloutState, Served, ServingTable, Side, Split, follow
from driftloop.services.deployment.metrics import PREDICTIONS, SERVING_VERSION
from driftloop.services.deployment.settings import DeploymentSettings

log = get_logger(__name__)

#: A replica's rollout events are named by what they report, so every replica that reports it gives one id.
_TOPIC = topic_for(Prediction)
_ROLLOUT_NAMESPACE = uuid.UUID("3c0f8a55-1d2e-4b6f-8a9c-7e5d4c3b2a19")


class Rollouts:
    """Follows ``registry.events`` and ``deployment.events`` from the start: history finds the champion and any
    challenger rolling out beside it, live events hot-swap them and move the split.

    A direct promotion is carried out here and reported on ``deployment.events``.
    A staged one (``ModelStaged``) loads the challenger beside the champion;
    monitoring runs its plan and verdict and reports each stage on
    ``deployment.events``, which every replica follows to route alike. When the
    rollout completes, the registry promotes the challenger, and the version
    already loaded becomes champion without a second load.
    """

    def __init__(
        self, settings: DeploymentSettings, config: DriftloopConfig, bus: Bus, store: ArtifactStore, table: ServingTable
    ) -> None:
        self.settings = settings
        self.config = config
        self.models = {m.name for m in config.models}
        self.bus = bus
        self.store = store
        self.table = table
        self.targets: dict[str, Target] = {}
        #: The newest staged version per model that is neither champion nor rejected yet.
        self.staged: dict[str, ModelStaged] = {}
        self.challengers: dict[str, Served] = {}
        self.plans: dict[str, RolloutState] = {}
        self.latency: dict[str, LatencyWatch] = {}
        self.caught_up = asyncio.Event()
        self.rollouts_caught_up = asyncio.Event()

    async def on_record(self, record: Record, live: bool) -> None:
        try:
            event = parse_internal(record.value)
        except ValidationError:
            # Not ours to judge: the registry's consumers dead-letter it; following must go on.
            log.warning("unreadable record on registry.events skipped", offset=record.offset)
            return
        if not isinstance(event, ModelPromoted | ModelRolledBack | ModelStaged | PromotionRejected):
            return
        if event.model_name not in self.models:
            return
        if isinstance(event, ModelStaged):
            await self.on_staged(event, live)
            return
        if isinstance(event, PromotionRejected):
            staged = self.staged.get(event.model_name)
            if staged is not None and staged.version == event.version:
                self.withdraw(event.model_name)
            return
        target = Target.of(event)
        current = self.targets.get(target.model_name)
        if not target.supersedes(current):
            log.warning(
                "stale alias change ignored",
                model=target.model_name,
                version=target.version,
                revision=target.revision,
                serving_revision=current.revision if current else None,
            )
            return
        self.targets[target.model_name] = target
        challenger = self.challengers.get(target.model_name)
        staged_over = challenger is not None and challenger.version == target.version
        if staged_over or not isinstance(event, ModelPromoted):
            self.withdraw(target.model_name)
        if not live:
            return
        if staged_over and challenger is not None:
            self.table.swap(challenger)
            SERVING_VERSION.labels(target.model_name).set(target.version)
            log.info("challenger became champion", model=target.model_name, version=target.version)
        else:
            await self.roll_out(target, event)

    async def on_staged(self, event: ModelStaged, live: bool) -> None:
        current = self.targets.get(event.model_name)
        if current is not None and current.version >= event.version:
            return
        self.withdraw(event.model_name)
        self.staged[event.model_name] = event
        if live:
            await self.load_challenger(event)

    async def load_challenger(self, event: ModelStaged) -> None:
        """Load a staged version beside the champion; one that cannot be loaded ends its rollout."""
        try:
            served = await self._read(event.model_name, event.version, event.artifact_uri, event.artifact_sha256)
        except Exception as exc:
            log.exception("challenger refused", model=event.model_name, version=event.version)
            await self.abort(event.model_name, event.version, event.strategy, event, f"not loaded: {exc!r}", {})
            return
        staged = self.staged.get(event.model_name)
        if staged is None or staged.version != event.version:
            return
        self.challengers[event.model_name] = served
        self.latency[event.model_name] = LatencyWatch()
        self.resplit(event.model_name)
        log.info("challenger loaded", model=event.model_name, version=event.version, strategy=event.strategy)

    def withdraw(self, model: str) -> None:
        self.staged.pop(model, None)
        self.challengers.pop(model, None)
        self.latency.pop(model, None)
        self.table.set_split(model, None)

    def resplit(self, model: str) -> None:
        """Route by the rollout's latest state once both its challenger and its plan are known here."""
        challenger, plan = self.challengers.get(model), self.plans.get(model)
        if challenger is None or plan is None or plan.version != challenger.version or plan.status == "aborted":
            self.table.set_split(model, None)
            return
        self.table.set_split(model, Split(challenger, plan))

    async def on_rollout_record(self, record: Record, live: bool) -> None:
        try:
            event = parse_internal(record.value)
        except ValidationError:
            log.warning("unreadable record on deployment.events skipped", offset=record.offset)
            return
        if not isinstance(event, RolloutStarted | RolloutStepped | RolloutCompleted | RolloutAborted):
            return
        if event.model_name not in self.models:
            return
        plan = follow(self.plans.get(event.model_name), event)
        if plan is None:
            return
        self.plans[event.model_name] = plan
        if plan.status == "aborted" and plan.version == getattr(self.staged.get(event.model_name), "version", None):
            self.withdraw(event.model_name)
        self.resplit(event.model_name)
        if live and plan.status == "running":
            log.info("rollout moved", model=event.model_name, version=plan.version, percent=plan.percent)

    async def on_rollouts_caught_up(self) -> None:
        self.rollouts_caught_up.set()

    async def on_caught_up(self) -> None:
        for target in self.targets.values():
            try:
                await self._load(target)
            except Exception:
                log.exception("cannot load the champion", model=target.model_name, version=target.version)
        for staged in list(self.staged.values()):
            await self.load_challenger(staged)
        self.caught_up.set()
        log.info("serving", models={s.model_name: s.version for s in self.table.all()})

    async def _read(self, model: str, version: int, uri: str, sha256: str | None) -> Served:
        data = await asyncio.to_thread(read_verified, self.store, uri, sha256)
        artifact = await asyncio.to_thread(ModelArtifact.from_bytes, data)
        return Served(model, version, uri, artifact, artifact_sha256=sha256)

    async def _load(self, target: Target) -> Served:
        """Load and swap in ``target``; a refused artifact raises before the swap, so serving goes on unchanged."""
        served = await self._read(target.model_name, target.version, target.artifact_uri, target.artifact_sha256)
        self.table.swap(served)
        SERVING_VERSION.labels(target.model_name).set(target.version)
        return served

    def observe_latency(self, model: str, version: int, seconds: float) -> float | None:
        """Count one model call of the challenger; the p99 in milliseconds once it is over the model's ceiling."""
        watch, challenger = self.latency.get(model), self.challengers.get(model)
        ceiling = self.config.rollout_for(model).max_p99_ms
        if watch is None or challenger is None or challenger.version != version or ceiling is None:
            return None
        p99 = watch.add(seconds * 1000)
        return p99 if p99 is not None and p99 > ceiling else None

    async def abort(
        self, model: str, version: int, strategy: str, cause: Envelope, reason: str, evidence: dict[str, float]
    ) -> None:
        """Withdraw the challenger here and report the abort; its id is the same from every replica."""
        self.withdraw(model)
        event = RolloutAborted(
            event_id=uuid.uuid5(_ROLLOUT_NAMESPACE, f"{model}:{version}:aborted:deployment").hex,
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            model_name=model,
            version=version,
            previous_version=getattr(self.table.get(model), "version", None),
            strategy=strategy,
            instance=self.settings.instance_id,
            reason=reason,
            evidence=evidence,
        )
        await self.bus.publish(event, model)
        log.warning("rollout aborted by deployment", model=model, version=version, reason=reason)

    async def check_latency(self, model: str, version: int, seconds: float) -> None:
        p99 = self.observe_latency(model, version, seconds)
        staged = self.staged.get(model)
        if p99 is None or staged is None:
            return
        ceiling = self.config.rollout_for(model).max_p99_ms
        reason = f"p99 latency {p99:.1f} ms over the ceiling of {ceiling:g} ms"
        await self.abort(model, version, staged.strategy, staged, reason, {"p99_ms": p99})

    async def roll_out(self, target: Target, cause: Envelope) -> None:
        previous = self.table.get(target.model_name)
        common = {
            "correlation_id": cause.correlation_id,
            "causation_id": cause.event_id,
            "model_name": target.model_name,
            "version": target.version,
            "previous_version": previous.version if previous else None,
            "strategy": "direct",
            "instance": self.settings.instance_id,
        }
        await self.bus.publish(RolloutStarted(**common), target.model_name)
        try:
            await self._load(target)
        except Exception as exc:
            log.exception("rollout aborted", model=target.model_name, version=target.version)
            await self.bus.publish(RolloutAborted(**common, reason=repr(exc)), target.model_name)
            return
        await self.bus.publish(RolloutCompleted(**common), target.model_name)
        log.info("rollout completed", model=target.model_name, version=target.version)


class Predictor:
    """Scores feature vectors in batches with every model that reads their view, and publishes the predictions.

    Batches matter: a tree ensemble scores 300 rows in about the time it
    takes to score two one at a time. During a staged rollout each vector is
    scored by the side its entity is routed to, and by the other side too
    when the stage is shadowed; each side's rows are still one model call.
    """

    def __init__(self, config: DriftloopConfig, bus: Bus, table: ServingTable, rollouts: Rollouts) -> None:
        self.views = {m.name: m.feature_view for m in config.models}
        self.bus = bus
        self.table = table
        self.rollouts = rollouts
        self.vectors = ContractReader(FeatureVector)

    async def __call__(self, records: list[Record]) -> list[tuple[Record, PoisonMessage]]:
        read, rejected = self.vectors.read_all(records)
        vectors = [vector for _, vector in read]
        for model, view in self.views.items():
            batch = [v for v in vectors if v["feature_view"] == view]
            if not batch:
                continue
            groups: dict[tuple[int, str, bool], tuple[Side, list[dict[str, Any]]]] = {}
            for vector in batch:
                for side in self.table.sides(model, vector["entity_id"]):
                    key = (id(side.served), side.role, side.serves)
                    groups.setdefault(key, (side, []))[1].append(vector)
            if not groups:
                PREDICTIONS.labels(model, "stream", "no_model").inc(len(batch))
                continue
            for side, rows in groups.values():
                await self.score(model, side, rows)
            PREDICTIONS.labels(model, "stream", "ok").inc(len(batch))
        return rejected

    async def score(self, model: str, side: Side, batch: list[dict[str, Any]]) -> None:
        """Score ``batch`` (a ``FeatureVector``'s fields each, as read from the topic) with one side's model."""
        started = time.perf_counter()
        labels, probabilities = await asyncio.to_thread(side.served.artifact.predict, [v["features"] for v in batch])
        if side.role == "challenger":
            await self.rollouts.check_latency(model, side.served.version, time.perf_counter() - started)
        event_ids = new_event_ids(len(batch))
        first = batch[0]
        # Every field is given: a default factory costs more than validating all of them (pydantic 2.14).
        template = Prediction(
            event_id=event_ids[0],
            occurred_at=utcnow(),
            correlation_id=first["correlation_id"],
            causation_id=first["event_id"],
            source_event_id=first["event_id"],
            entity_id=first["entity_id"],
            event_time=first["event_time"],
            model_name=model,
            model_version=side.served.version,
            role=side.role,
            served=side.serves,
            channel="stream",
            prediction=labels[0],
            probability=probabilities[0],
            label=first["label"],
        )
        changes = [
            {
                "event_id": event_id,
                "correlation_id": vector["correlation_id"],
                "causation_id": vector["event_id"],
                "source_event_id": vector["event_id"],
                "entity_id": vector["entity_id"],
                "event_time": vector["event_time"],
                "prediction": label,
                "probability": probability,
                "label": vector["label"],
            }
            for vector, event_id, label, probability in zip(batch, event_ids, labels, probabilities, strict=True)
        ]
        self.bus.defer(_TOPIC, self.bus.encode_many(template, changes, [v["event_id"] for v in batch]))
