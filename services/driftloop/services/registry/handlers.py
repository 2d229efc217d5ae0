"""``training.runs`` in: register the version, score it against the champion, roll it out or reject it.
``deployment.events`` in: a staged rollout's verdict makes the challenger champion or withdraws it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from driftloop.artifacts import ArtifactRefused, ArtifactStore, read_verified, sha256_hex, verify_sha256
from driftloop.bus import PoisonMessage, Record
from driftloop.config import PromotionPolicy, RolloutPolicy
from driftloop.contracts import (
    RolloutAborted,
    RolloutCompleted,
    RolloutStarted,
    RolloutStepped,
    TrainingRunCompleted,
    TrainingRunFailed,
    parse_internal,
)
from driftloop.contracts.events import DataWindow, Features, GateDecision, LabelValue
from driftloop.db import OutboxRelay
from driftloop.logging import get_logger
from driftloop.modeling import ModelArtifact
from driftloop.services.registry.gate import decide, outside_window
from driftloop.services.registry.store import ModelVersion, Registry

log = get_logger(__name__)


@dataclass(frozen=True)
class HoldoutRow:
    features: Features
    label: LabelValue
    event_time: datetime | None


class Evaluator:
    """Scores artifacts on a holdout so both sides of the gate are measured by the registry itself."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def challenger(self, run: TrainingRunCompleted) -> tuple[ModelArtifact, str]:
        """The model the gate scores and the SHA-256 to record for what the version serves.

        Both artifacts of the run, the evaluated one and the refit one the
        version serves, are held to the checksums training sent with them.
        """
        data = self.store.get(run.artifact_uri)
        if run.artifact_sha256 is not None:
            verify_sha256(data, run.artifact_sha256, run.artifact_uri)
        served = sha256_hex(data)
        if run.refit_artifact_uri is not None:
            refit = self.store.get(run.refit_artifact_uri)
            if run.refit_artifact_sha256 is not None:
                verify_sha256(refit, run.refit_artifact_sha256, run.refit_artifact_uri)
            ModelArtifact.from_bytes(refit)
            served = sha256_hex(refit)
        return ModelArtifact.from_bytes(data), served

    def champion(self, row: ModelVersion) -> ModelArtifact:
        """A registered version's model, held to the checksum recorded when it was registered."""
        return ModelArtifact.from_bytes(read_verified(self.store, row.artifact_uri, row.artifact_sha256))

    def holdout(self, holdout_uri: str) -> list[HoldoutRow]:
        """The run's holdout; rows written before holdouts carried event times have none."""
        rows: list[dict[str, Any]] = [
            json.loads(line) for line in self.store.get(holdout_uri).splitlines() if line.strip()
        ]
        return [
            HoldoutRow(
                features=r["features"],
                label=r["label"],
                event_time=datetime.fromisoformat(r["event_time"]) if r.get("event_time") else None,
            )
            for r in rows
        ]


def predict(artifact: ModelArtifact, rows: Sequence[HoldoutRow]) -> list[LabelValue]:
    predictions, _ = artifact.predict([r.features for r in rows])
    return predictions


class RunHandler:
    def __init__(
        self,
        registry: Registry,
        evaluator: Evaluator,
        policy: PromotionPolicy,
        relay: OutboxRelay,
        categorical: Sequence[str] = (),
        schema_fingerprint: str = "",
        rollout_for: Callable[[str], RolloutPolicy] = lambda _: RolloutPolicy(),
    ) -> None:
        self.registry = registry
        self.evaluator = evaluator
        self.policy = policy
        self.relay = relay
        #: Each model's rollout, which decides whether a passed version is promoted at once or staged.
        self.rollout_for = rollout_for
        #: Features the gate slices per value (the dataset's categorical ones).
        self.categorical = list(categorical)
        #: The dataset schema's fingerprint in force when a version is registered: its semver compares it.
        self.schema_fingerprint = schema_fingerprint

    async def __call__(self, record: Record) -> None:
        event = parse_internal(record.value)
        if isinstance(event, TrainingRunCompleted):
            await self.on_completed(event)
        elif isinstance(event, TrainingRunFailed):
            log.warning("training run failed", run_id=event.run_id, model=event.model_name, error=event.error)

    def evaluate(
        self,
        run: TrainingRunCompleted,
        challenger_model: ModelArtifact,
        champion_model: ModelArtifact | None,
        champion_window: DataWindow | None,
    ) -> GateDecision:
        """Both models on the holdout rows the champion never trained on, then the gate on their predictions.

        The challenger is scored as evaluated by its run (fitted on the
        training rows only); the champion as it serves.
        """
        holdout = self.evaluator.holdout(run.holdout_uri)
        rows = holdout
        if champion_window is not None:
            start, end = champion_window.start, champion_window.end
            rows = [r for r in holdout if outside_window(r.event_time, start, end)]
        challenger = predict(challenger_model, rows)
        champion = predict(champion_model, rows) if champion_model else None
        return decide(
            self.policy,
            [r.label for r in rows],
            challenger,
            champion,
            features=[r.features for r in rows],
            categorical=self.categorical,
            excluded_rows=len(holdout) - len(rows),
        )

    async def on_completed(self, run: TrainingRunCompleted) -> None:
        if self.registry.by_run(run.run_id) is not None:
            return
        try:
            artifact, sha256 = await asyncio.to_thread(self.evaluator.challenger, run)
        except ArtifactRefused as exc:
            raise PoisonMessage(f"model of run {run.run_id} refused: {exc}") from exc
        with self.registry.session() as s:
            champion = self.registry.champion(s, run.model_name)
            window = DataWindow.model_validate(champion.data_window) if champion else None
        champion_model, unscored = await self._champion_model(champion)
        decision = await asyncio.to_thread(self.evaluate, run, artifact, champion_model, window)
        if unscored:
            decision = decision.model_copy(update={"reason": f"{unscored}: the challenger is judged alone"})
        with self.registry.session() as s:
            row = self.registry.register(s, run, sha256, self.schema_fingerprint)
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
                self.registry.adopt(
                    s,
                    row,
                    self.rollout_for(run.model_name).strategy,
                    actor="gate",
                    reason=decision.reason,
                    causation_id=run.event_id,
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

    async def _champion_model(self, champion: ModelVersion | None) -> tuple[ModelArtifact | None, str]:
        """The champion's model, or None and why when its artifact is refused.

        A champion whose artifact fails its checksum or format (a joblib model
        from before skops) cannot be scored, and must not keep every new
        version out: the challenger is then judged alone, and the decision
        says so.
        """
        if champion is None:
            return None, ""
        try:
            return await asyncio.to_thread(self.evaluator.champion, champion), ""
        except ArtifactRefused as exc:
            log.warning("champion refused", model=champion.model_name, version=champion.version, error=str(exc))
            return None, f"champion v{champion.version} not scored, its artifact is refused ({exc})"


class RolloutHandler:
    """Follows staged rollouts on ``deployment.events`` into the registry.

    Starts and steps are audited; completion promotes the challenger, an
    abort withdraws it and is announced as a rejection, so training and
    monitoring end the loop's turn as for a challenger the gate refused.
    Events about versions that are not rolling out (direct rollouts, a
    verdict already recorded, a superseded rollout) change nothing, which
    also makes a replayed event harmless.
    """

    def __init__(self, registry: Registry, relay: OutboxRelay) -> None:
        self.registry = registry
        self.relay = relay

    async def __call__(self, record: Record) -> None:
        event = parse_internal(record.value)
        if isinstance(event, RolloutStarted | RolloutStepped | RolloutCompleted | RolloutAborted):
            await asyncio.to_thread(self.apply, event)

    def apply(self, event: RolloutStarted | RolloutStepped | RolloutCompleted | RolloutAborted) -> None:
        model, version = event.model_name, event.version
        with self.registry.session() as s:
            if self.registry.by_version(s, model, version) is None:
                return
            if isinstance(event, RolloutStarted):
                changed = self.registry.note_rollout(
                    s, model, version, "rollout_started", f"{event.strategy} at {event.percent or 0:g} %", {}
                )
            elif isinstance(event, RolloutStepped):
                changed = self.registry.note_rollout(
                    s,
                    model,
                    version,
                    "rollout_stepped",
                    f"{event.previous_percent:g} % to {event.percent:g} %",
                    event.evidence,
                )
            elif isinstance(event, RolloutCompleted):
                reason = f"{event.strategy}, online verdict passed"
                changed = (
                    self.registry.complete_rollout(
                        s, model, version, reason=reason, evidence=event.evidence, causation_id=event.event_id
                    )
                    is not None
                )
            else:
                changed = (
                    self.registry.abort_rollout(
                        s, model, version, reason=event.reason, evidence=event.evidence, causation_id=event.event_id
                    )
                    is not None
                )
            if not changed:
                return
            s.commit()
        log.info("rollout recorded", model=model, version=version, event_type=event.event_type)
        self.relay.wakeup.set()
