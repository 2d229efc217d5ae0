"""``training.runs`` in: register the version, score it against the champion, promote or reject."""

from __future__ import annotations

import asyncio
import json

from driftloop.artifacts import ArtifactStore
from driftloop.bus import Record
from driftloop.config import PromotionPolicy
from driftloop.contracts import TrainingRunCompleted, TrainingRunFailed, parse_internal
from driftloop.contracts.events import Metrics
from driftloop.db import OutboxRelay
from driftloop.logging import get_logger
from driftloop.modeling import ModelArtifact, score
from driftloop.services.registry.domain import gate
from driftloop.services.registry.store import Registry

log = get_logger(__name__)


class Evaluator:
    """Scores artifacts on a holdout so both sides of the gate are measured by the registry itself."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def metrics(self, artifact_uri: str, holdout_uri: str) -> Metrics:
        artifact = ModelArtifact.from_bytes(self.store.get(artifact_uri))
        rows = [json.loads(line) for line in self.store.get(holdout_uri).splitlines() if line.strip()]
        predictions, _ = artifact.predict([r["features"] for r in rows])
        return score([r["label"] for r in rows], predictions)


class RunHandler:
    def __init__(self, registry: Registry, evaluator: Evaluator, policy: PromotionPolicy, relay: OutboxRelay) -> None:
        self.registry = registry
        self.evaluator = evaluator
        self.policy = policy
        self.relay = relay

    async def __call__(self, record: Record) -> None:
        event = parse_internal(record.value)
        if isinstance(event, TrainingRunCompleted):
            await self.on_completed(event)
        elif isinstance(event, TrainingRunFailed):
            log.warning("training run failed", run_id=event.run_id, model=event.model_name, error=event.error)

    async def on_completed(self, run: TrainingRunCompleted) -> None:
        if self.registry.by_run(run.run_id) is not None:
            return
        challenger = await asyncio.to_thread(self.evaluator.metrics, run.artifact_uri, run.holdout_uri)
        with self.registry.session() as s:
            champion = self.registry.champion(s, run.model_name)
            champion_uri = champion.artifact_uri if champion else None
        champion_metrics = (
            await asyncio.to_thread(self.evaluator.metrics, champion_uri, run.holdout_uri) if champion_uri else None
        )
        decision = gate(challenger, champion_metrics, self.policy)
        with self.registry.session() as s:
            row = self.registry.register(s, run)
            row.gate = decision.model_dump(mode="json")
            if not decision.passed:
                self.registry.reject(s, row, decision, run.event_id)
            elif self.policy.require_approval:
                self.registry.hold_for_approval(s, row, decision)
            else:
                self.registry.promote(
                    s,
                    row,
                    actor="gate",
                    reason=decision.reason,
                    causation_id=run.event_id,
                    correlation_id=run.correlation_id,
                    decision=decision,
                )
            s.commit()
            log.info(
                "version registered",
                model=row.model_name,
                version=row.version,
                gate=decision.reason,
                passed=decision.passed,
            )
        self.relay.wakeup.set()
