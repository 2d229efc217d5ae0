"""Staged rollouts on a real broker: the registry stages a version, deployment routes by the split, monitoring
judges both sides on labelled outcomes and the registry promotes or withdraws the challenger.

Training and the features service are stood in for by what they publish (the runs, the feature vectors,
labelled as a producer may label its events); registry, deployment and monitoring run for real.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI

from driftloop.bus import Bus
from driftloop.bus.metadata import topic_partitions
from driftloop.config import DriftloopConfig, RolloutPolicy, load_config
from driftloop.contracts import (
    FeatureVector,
    ModelPromoted,
    ModelStaged,
    Prediction,
    PromotionRejected,
    RolloutAborted,
    RolloutCompleted,
    RolloutStarted,
    RolloutStepped,
    parse_internal,
    utcnow,
)
from driftloop.rollout import routes_to_challenger, split_salt
from driftloop.services.deployment.main import create_app as deployment_app
from driftloop.services.deployment.settings import DeploymentSettings
from driftloop.services.monitoring.main import create_app as monitoring_app
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.services.registry.main import create_app as registry_app
from driftloop.services.registry.settings import RegistrySettings
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION, announced_run, running

REPO = Path(__file__).resolve().parents[2]
CANARY = "loan-approval"
SHADOW = "loan-shadow"
ENTITIES = [f"customer-{i}" for i in range(1000)]


def _config() -> DriftloopConfig:
    """Two models on one view: a canary of 20 then 50 %, and a shadow; short stages, so the test is quick."""
    config = load_config(REPO / "driftloop.yaml")
    quick = {"min_duration": timedelta(seconds=1), "min_outcomes": 30, "margin": 0.05}
    # Stages of 4 s at least, so several rounds of traffic fall within each one and its split can be measured.
    canary = RolloutPolicy(
        strategy="canary",
        steps=[20, 50, 100],  # type: ignore[list-item]
        **{**quick, "min_duration": timedelta(seconds=4)},  # type: ignore[arg-type]
    )
    shadow = RolloutPolicy(strategy="shadow", **quick)  # type: ignore[arg-type]
    spec = config.models[0].model_copy(update={"features": list(APPLICATION)})
    return config.model_copy(
        update={
            "models": [
                spec.model_copy(update={"rollout": canary}),
                spec.model_copy(update={"name": SHADOW, "rollout": shadow}),
            ],
            "promotion": config.promotion.model_copy(update={"floor": None}),
        }
    )


class Tail:
    """Every record of some topics from their start, read on as the test goes."""

    def __init__(self, settings: DriftloopSettings, topics: list[str]) -> None:
        self.settings, self.topics = settings, topics
        self.records: dict[str, list[Any]] = {t: [] for t in topics}
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)

    async def start(self) -> None:
        tps = await topic_partitions(self.settings.bootstrap, [self.settings.topic(t) for t in self.topics])
        await self.consumer.start()
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)

    async def until(self, done: Callable[[dict[str, list[Any]]], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.records):
            assert time.monotonic() < deadline, "timed out waiting on the topics"
            for tp, messages in (await self.consumer.getmany(timeout_ms=200)).items():
                topic = tp.topic.removeprefix(self.settings.topic_prefix)
                self.records[topic] += [parse_internal(m.value or b"") for m in messages]

    def of(self, topic: str, kind: type, model: str) -> list[Any]:
        """Events of ``kind`` about ``model``; on ``deployment.events`` the staged rollouts only, not the
        direct swaps deployment reports itself."""
        return [
            e
            for e in self.records[topic]
            if isinstance(e, kind) and e.model_name == model and getattr(e, "strategy", None) != "direct"
        ]


@dataclass
class StageCount:
    """Served stream predictions of the canary model while its challenger held one share of traffic."""

    served: int = 0
    on_challenger: int = 0
    sides: dict[str, set[str]] = field(default_factory=dict)


async def _state(client: httpx.AsyncClient, model: str) -> tuple[str, float | None]:
    view = (await client.get(f"/v1/deployments/{model}")).json()
    return view["strategy"], view["challenger_percent"]


def _outcomes(monitoring: FastAPI, model: str) -> int:
    track = monitoring.state.streams.track(model)
    return sum(m.observations for m in track.monitors.values()) if track else 0


async def _round(
    bus: Bus, tail: Tail, monitoring: FastAPI, rng: random.Random, tag: str, n: int = 100
) -> list[Prediction]:
    """``n`` labelled vectors (the concept after the drift: big loans refused); the served canary predictions.

    Each round waits until monitoring has counted the canary's outcomes of every event so far (one per
    event: only the side that serves scores it), so the test goes at the pace the verdict can follow.
    """
    expected = _outcomes(monitoring, CANARY) + n
    ids = set()
    async with bus.acknowledged():
        for i in range(n):
            loan = rng.uniform(0, 200_000)
            vector = FeatureVector(
                event_id=f"{tag}-{i}",
                entity_id=rng.choice(ENTITIES),
                event_time=utcnow(),
                feature_view="applications",
                features={**APPLICATION, "loan": loan, "salary": rng.uniform(20_000, 150_000)},
                label=int(loan <= 100_000),
            )
            ids.add(vector.event_id)
            await bus.publish(vector, vector.entity_id, wait=False)

    def scored(records: dict[str, list[Any]]) -> bool:
        done = {(p.source_event_id, p.model_name) for p in records["predictions"] if p.served}
        return all((i, m) in done for i in ids for m in (CANARY, SHADOW))

    await tail.until(scored)
    deadline = time.monotonic() + 60
    while _outcomes(monitoring, CANARY) < expected:
        assert time.monotonic() < deadline, "monitoring did not count the round's outcomes"
        await asyncio.sleep(0.1)
    return [p for p in tail.of("predictions", Prediction, CANARY) if p.served and p.source_event_id in ids]


async def test_canary_completes_a_better_challenger_aborts_a_worse_one_and_a_shadow_changes_no_response(
    settings: DriftloopSettings, bus: Bus
) -> None:
    config = _config()
    registry = RegistrySettings(**settings.model_dump())
    deployment = DeploymentSettings(**{**settings.model_dump(), "service": "deployment"})
    monitoring = MonitoringSettings(**{**settings.model_dump(), "service": "monitoring"})
    tail = Tail(settings, ["registry.events", "deployment.events", "predictions"])
    rng = random.Random(7)
    big_loan = {**APPLICATION, "loan": 190_000.0}
    async with (
        running(registry_app(registry, config)) as registry_client,
        running(deployment_app(deployment, config)) as serving,
        running(judge := monitoring_app(monitoring, config)),
    ):
        await tail.start()
        for model, seed in ((CANARY, 1), (SHADOW, 11)):
            await bus.publish(announced_run(settings, f"{model}-v1", flip=False, seed=seed, model=model), model)
        await tail.until(lambda r: sum(isinstance(e, ModelPromoted) for e in r["registry.events"]) == 2)
        while (await serving.get(f"/v1/deployments/{SHADOW}")).status_code != 200:
            await asyncio.sleep(0.1)

        # A better challenger, after the concept flipped: staged, stepped, completed.
        for model, seed in ((CANARY, 2), (SHADOW, 12)):
            await bus.publish(announced_run(settings, f"{model}-v2", flip=True, seed=seed, model=model), model)
        await tail.until(lambda r: len(tail.of("registry.events", ModelStaged, CANARY)) == 1)
        stages: dict[float, StageCount] = {}
        shadow_answers: list[tuple[datetime, int]] = []
        rounds = 0
        while not (
            tail.of("deployment.events", RolloutCompleted, CANARY)
            and tail.of("deployment.events", RolloutCompleted, SHADOW)
        ):
            before = await _state(serving, CANARY)
            if not tail.of("deployment.events", RolloutCompleted, SHADOW):
                answer = await serving.post(f"/v1/models/{SHADOW}/predict", json={"instances": [big_loan]})
                shadow_answers.append((utcnow(), answer.json()["model_version"]))
            served = await _round(bus, tail, judge, rng, f"better-{rounds}")
            rounds += 1
            assert rounds < 60, "the better challenger's rollout did not complete"
            if before != await _state(serving, CANARY) or before[0] != "canary" or before[1] is None:
                continue
            count = stages.setdefault(before[1], StageCount())
            for prediction in served:
                count.served += 1
                count.on_challenger += prediction.role == "challenger"
                count.sides.setdefault(prediction.entity_id or "", set()).add(prediction.role)

        started = tail.of("deployment.events", RolloutStarted, CANARY)
        stepped = tail.of("deployment.events", RolloutStepped, CANARY)
        completed = tail.of("deployment.events", RolloutCompleted, CANARY)
        assert [(e.version, e.strategy, e.percent) for e in started] == [(2, "canary", 20)]
        assert [(e.step, e.previous_percent, e.percent) for e in stepped] == [(1, 20, 50)]
        verdict = completed[0].evidence
        assert verdict["challenger_outcomes"] >= 30 and verdict["champion_outcomes"] >= 30
        assert verdict["challenger_error_rate"] < verdict["champion_error_rate"]
        print(
            f"canary completed: {verdict['challenger_outcomes'] + verdict['champion_outcomes']:.0f} labelled "
            f"outcomes, {(completed[0].occurred_at - started[0].occurred_at).total_seconds():.1f} s"
        )

        # The split: each stage's share of served predictions on the challenger, and every entity on its side.
        salt = split_salt(CANARY, 2)
        for percent, count in stages.items():
            share = 100 * count.on_challenger / count.served
            tolerance = 4 * 100 * math.sqrt(percent / 100 * (1 - percent / 100) / count.served)
            assert abs(share - percent) <= tolerance, (percent, share, count.served)
            for entity, sides in count.sides.items():
                expected = "challenger" if routes_to_challenger(entity, percent, salt) else "champion"
                assert sides == {expected}, (percent, entity, sides)
        assert {20.0, 50.0} <= set(stages), "both canary stages were measured"

        await tail.until(lambda r: tail.of("registry.events", ModelPromoted, CANARY)[-1].version == 2)
        while (await _state(serving, CANARY))[0] != "direct":
            await asyncio.sleep(0.1)
        promoted = tail.of("registry.events", ModelPromoted, CANARY)[-1]
        assert (promoted.version, promoted.actor) == (2, "rollout")
        answer = await serving.post(f"/v1/models/{CANARY}/predict", json={"instances": [big_loan]})
        assert answer.json()["model_version"] == 2 and answer.json()["predictions"] == [0]
        audit = [a["action"] for a in (await registry_client.get("/v1/audit", params={"model": CANARY})).json()]
        assert audit[:4] == ["promoted", "rollout_stepped", "rollout_started", "rollout_begun"]

        # The shadow: its challenger scored beside the champion, and no caller ever saw it.
        shadow = tail.of("predictions", Prediction, SHADOW)
        shadow_end = tail.of("deployment.events", RolloutCompleted, SHADOW)[0]
        during = [p for p in shadow if p.occurred_at < shadow_end.occurred_at]
        answered = [version for at, version in shadow_answers if at < shadow_end.occurred_at]
        assert answered and set(answered) == {1}
        assert {(p.model_version, p.role) for p in during if p.served} == {(1, "champion")}
        assert {(p.model_version, p.role) for p in during if not p.served} == {(2, "challenger")}

        # A worse challenger, let through by a fooled offline gate: aborted online, traffic back on v2.
        await bus.publish(announced_run(settings, "shuffled", flip=True, seed=3, shuffled=True), CANARY)
        await tail.until(lambda r: len(tail.of("registry.events", ModelStaged, CANARY)) == 2)
        while not tail.of("deployment.events", RolloutAborted, CANARY):
            await _round(bus, tail, judge, rng, f"worse-{rounds}")
            rounds += 1
            assert rounds < 90, "the worse challenger was not aborted"
        aborted = [e for e in tail.of("deployment.events", RolloutAborted, CANARY) if e.instance == "monitoring"]
        begun = [e for e in tail.of("deployment.events", RolloutStarted, CANARY) if e.version == 3][0]
        assert [e.version for e in aborted] == [3]
        evidence = aborted[0].evidence
        assert evidence["lower"] > 0 and evidence["challenger_error_rate"] > evidence["champion_error_rate"]
        print(
            f"canary aborted: {evidence['challenger_outcomes'] + evidence['champion_outcomes']:.0f} labelled "
            f"outcomes, {(aborted[0].occurred_at - begun.occurred_at).total_seconds():.1f} s"
        )
        await tail.until(lambda r: bool(tail.of("registry.events", PromotionRejected, CANARY)))
        rejected = tail.of("registry.events", PromotionRejected, CANARY)[0]
        assert rejected.version == 3 and rejected.decision.reason.startswith("rollout aborted: ")
        while (await _state(serving, CANARY))[0] != "direct":
            await asyncio.sleep(0.1)
        after = await _round(bus, tail, judge, rng, "after-abort")
        assert {(p.model_version, p.role) for p in after} == {(2, "champion")}
        versions = (await registry_client.get(f"/v1/models/{CANARY}/versions")).json()
        assert [(v["version"], v["status"], v["aliases"]) for v in versions][1:] == [
            (2, "champion", ["champion"]),
            (3, "aborted", []),
        ]
        audit = (await registry_client.get("/v1/audit", params={"model": CANARY})).json()
        assert audit[0]["action"] == "rollout_aborted" and audit[0]["decision"]["online"]["lower"] > 0
    await tail.consumer.stop()
