"""``training.runs`` in: register the version, score it against the champion, promote or reject."""

from __future__ import annotations

import asyncio
import json

from driftloop.artifacts import ArtifactRefused, ArtifactStore, read_verified, sha256_hex, verify_sha256
from driftloop.bus import PoisonMessage, Record
from driftloop.config import PromotionPolicy
from driftloop.contracts import TrainingRunCompleted, TrainingRunFailed, parse_internal
from driftloop.contracts.events import Metrics
from driftloop.db import OutboxRelay
from driftloop.logging import get_logger
from driftloop.modeling import ModelArtifact, score
from driftloop.services.registry.domain import gate
from driftloop.services.registry.store import ModelVersion, Registry

log = get_logger(__name__)


class Evaluator:
    """Scores artifacts on a holdout so both sides of the gate are measured by the registry itself."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def challenger(self, run: TrainingRunCompleted) -> tuple[ModelArtifact, str]:
        """The run's model and the SHA-256 to record for it: the checksum training sent, when it sent one, must hold."""
        data = self.store.get(run.artifact_uri)
        if run.artifact_sha256 is not None:
            verify_sha256(data, run.artifact_sha256, run.artifact_uri)
        return ModelArtifact.from_bytes(data), sha256_hex(data)

    def champion(self, row: ModelVersion) -> ModelArtifact:
        """A registered version's model, held to the checksum recorded when it was registered."""
        return ModelArtifact.from_bytes(read_verified(self.store, row.artifact_uri, row.artifact_sha256))

    def metrics(self, artifact: ModelArtifact, holdout_uri: str) -> Metrics:
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
        try:
            artifact, sha256 = await asyncio.to_thread(self.evaluator.challenger, run)
        except ArtifactRefused as exc:
            raise PoisonMessage(f"model of run {run.run_id} refused: {exc}") from exc
        challenger = await asyncio.to_thread(self.evaluator.metrics, artifact, run.holdout_uri)
        with self.registry.session() as s:
            champion = self.registry.champion(s, run.model_name)
        champion_metrics, unscored = await self._champion_metrics(champion, run.holdout_uri)
        decision = gate(challenger, champion_metrics, self.policy)
        if unscored:
            decision = decision.model_copy(update={"reason": f"{unscored}: the challenger is judged alone"})
        with self.registry.session() as s:
            row = self.registry.register(s, run, sha256)
            pin = self.registry.pinned(s, run.model_name)
            if decision.passed and pin is not None:
                decision = decision.model_copy(
                    update={
                        "passed": False,
                        "reason": f"{decision.reason}, but champion v{pin.version} is pinned by {pin.actor}"
                        + (f": {pin.reason}" if pin.reason else ""),
                    }
                )
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

    async def _champion_metrics(self, champion: ModelVersion | None, holdout_uri: str) -> tuple[Metrics | None, str]:
        """The champion's score on the holdout, or None and why when its artifact is refused.

        A champion whose artifact fails its checksum or format (a joblib model
        from before skops) cannot be scored, and must not keep every new
        version out: the challenger is then judged alone, and the decision
        says so.
        """
        if champion is None:
            return None, ""
        try:
            artifact = await asyncio.to_thread(self.evaluator.champion, champion)
        except ArtifactRefused as exc:
            log.warning("champion refused", model=champion.model_name, version=champion.version, error=str(exc))
            return None, f"champion v{champion.version} not scored, its artifact is refused ({exc})"
        return await asyncio.to_thread(self.evaluator.metrics, artifact, holdout_uri), ""
