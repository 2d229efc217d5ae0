"""Deployment on a real broker: serves the champion it finds in registry.events, hot-swaps without failing requests."""

from __future__ import annotations

import asyncio
from typing import Literal

import httpx
import numpy as np
from prometheus_client import REGISTRY

from driftloop.artifacts import open_store, sha256_hex
from driftloop.bus import Bus
from driftloop.contracts import (
    FeatureVector,
    ModelPromoted,
    Prediction,
    RolloutAborted,
    RolloutCompleted,
    RolloutStarted,
    parse_internal,
    utcnow,
)
from driftloop.modeling import ModelArtifact, build_pipeline, select
from driftloop.services.deployment.main import create_app
from driftloop.services.deployment.settings import DeploymentSettings
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION, read_topic, running

MODEL = "loan-approval"
FEATURES = list(APPLICATION)


Stored = tuple[str, str]


def _artifact(settings: DriftloopSettings, run_id: str, constant: int) -> Stored:
    """A real pipeline that learned to answer ``constant`` for loans above 100k, and its URI and SHA-256."""
    rows = [{**APPLICATION, "loan": float(loan)} for loan in range(0, 200_000, 1_000)]
    labels = [constant if row["loan"] > 100_000 else 1 - constant for row in rows]
    pipeline = build_pipeline("logistic_regression", {})
    pipeline.fit(select(rows, FEATURES), labels)
    data = ModelArtifact(MODEL, run_id, FEATURES, pipeline).to_bytes()
    return open_store(settings).put(f"models/{MODEL}/{run_id}/model.skops", data), sha256_hex(data)


def _promoted(version: int, stored: Stored) -> ModelPromoted:
    uri, sha256 = stored
    return ModelPromoted(
        model_name=MODEL,
        version=version,
        previous_version=version - 1 or None,
        artifact_uri=uri,
        artifact_sha256=sha256,
        actor="gate",
    )


async def test_serves_the_champion_from_history_and_hot_swaps_without_failed_requests(
    settings: DriftloopSettings, bus: Bus
) -> None:
    await bus.send("registry.events", b"not an event", MODEL, [])
    await bus.publish(_promoted(1, _artifact(settings, "r1", constant=1)), MODEL)
    deployment = DeploymentSettings(**settings.model_dump())
    big_loan = {**APPLICATION, "loan": 190_000.0}
    async with running(create_app(deployment)) as client:
        first = await client.post(f"/v1/models/{MODEL}/predict", json={"instances": [big_loan, big_loan]})
        assert first.status_code == 200
        body = first.json()
        assert body["model_version"] == 1 and body["predictions"] == [1, 1] and len(body["prediction_ids"]) == 2

        v2 = _artifact(settings, "r2", constant=0)
        failures: list[int] = []
        versions: set[int] = set()

        async def hammer() -> None:
            for _ in range(60):
                response = await client.post(f"/v1/models/{MODEL}/predict", json={"instances": [big_loan]})
                if response.status_code != 200:
                    failures.append(response.status_code)
                else:
                    versions.add(response.json()["model_version"])
                await asyncio.sleep(0.05)

        load = asyncio.create_task(hammer())
        await bus.publish(_promoted(2, v2), MODEL)
        await load
        assert failures == []
        assert versions == {1, 2}

        swapped = await client.post(f"/v1/models/{MODEL}/predict", json={"instances": [big_loan]})
        assert swapped.json()["model_version"] == 2 and swapped.json()["predictions"] == [0]
        status = (await client.get(f"/v1/deployments/{MODEL}")).json()
        assert status["version"] == 2 and (status["artifact_uri"], status["artifact_sha256"]) == v2

        infer = await client.post(
            f"/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in big_loan.items()]},
        )
        assert infer.status_code == 200
        assert infer.json()["model_version"] == "2" and infer.json()["outputs"][0]["data"] == [0]

        await bus.publish(_promoted(3, (open_store(settings).uri("nowhere/model.skops"), "0" * 64)), MODEL)
        rollouts = [parse_internal(r.value) for r in await read_topic(settings, "deployment.events", 4)]
        assert [type(r) for r in rollouts] == [RolloutStarted, RolloutCompleted, RolloutStarted, RolloutAborted]
        still = await client.post(f"/v1/models/{MODEL}/predict", json={"instances": [big_loan]})
        assert still.json()["model_version"] == 2, "a failed rollout must keep the running version"

        unknown = await client.post("/v1/models/other/predict", json={"instances": [big_loan]})
        assert unknown.status_code == 404
        empty = await client.post(f"/v1/models/{MODEL}/predict", json={"instances": []})
        assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "instances"]


async def test_predicts_on_the_features_stream_with_the_model_version(settings: DriftloopSettings, bus: Bus) -> None:
    await bus.publish(_promoted(1, _artifact(settings, "r1", constant=1)), MODEL)
    vectors = [
        FeatureVector(
            event_id=f"ev{i}",
            entity_id="c",
            event_time=utcnow(),
            feature_view="applications",
            features={**APPLICATION, "loan": 190_000.0, "entity_count": 1.0},
            label=1,
        )
        for i in range(5)
    ]
    async with running(create_app(DeploymentSettings(**settings.model_dump()))):
        for vector in vectors:
            await bus.publish(vector, vector.entity_id)
        records = await read_topic(settings, "predictions", 5)
    predictions = [Prediction.model_validate_json(r.value) for r in records]
    assert sorted(p.source_event_id for p in predictions) == [f"ev{i}" for i in range(5)]
    assert {(p.model_version, p.prediction, p.label, p.channel) for p in predictions} == {(1, 1, 1, "stream")}
    assert all(r.key == Prediction.model_validate_json(r.value).source_event_id for r in records)


def _failures() -> float:
    return REGISTRY.get_sample_value("driftloop_prediction_publish_failures_total", {"model": MODEL}) or 0.0


async def test_async_acks_answer_first_and_every_answered_prediction_reaches_the_topic_by_shutdown(
    settings: DriftloopSettings, bus: Bus
) -> None:
    await bus.publish(_promoted(1, _artifact(settings, "r1", constant=1)), MODEL)
    deployment = DeploymentSettings(**settings.model_dump())
    assert deployment.prediction_acks == "async", "the default"
    loans = [50_000.0, 190_000.0, 150_000.0]
    answered: dict[str, int] = {}
    async with running(create_app(deployment)) as client:
        for _ in range(20):
            response = await client.post(
                f"/v1/models/{MODEL}/predict", json={"instances": [{**APPLICATION, "loan": loan} for loan in loans]}
            )
            assert response.status_code == 200
            body = response.json()
            assert body["predictions"] == [0, 1, 1]
            answered.update(zip(body["prediction_ids"], body["predictions"], strict=True))
        # Leaving at once: shutdown must still publish what was answered.
    records = await read_topic(settings, "predictions", len(answered))
    published = {r.key: Prediction.model_validate_json(r.value) for r in records}
    assert len(records) == len(answered) == 60
    assert {k: p.prediction for k, p in published.items()} == answered
    assert {(p.model_version, p.channel, p.source_event_id == k) for k, p in published.items()} == {(1, "rest", True)}


async def test_micro_batched_requests_share_model_calls_and_each_gets_its_own_rows(
    settings: DriftloopSettings, bus: Bus
) -> None:
    await bus.publish(_promoted(1, _artifact(settings, "r1", constant=1)), MODEL)
    deployment = DeploymentSettings(**settings.model_dump(), predict_batch_rows=64, predict_batch_wait_ms=50)
    requests = [[190_000.0 if (i + j) % 2 else 10_000.0 for j in range(1 + i % 3)] for i in range(16)]
    # A row without its loan is NaN to the linear model, which rejects it: that request alone must fail, with a
    # 422 naming the feature.
    without_loan = {k: v for k, v in APPLICATION.items() if k != "loan"}
    url = f"/v1/models/{MODEL}/predict"
    async with running(create_app(deployment)) as client:

        async def post(loans: list[float]) -> httpx.Response:
            return await client.post(url, json={"instances": [{**APPLICATION, "loan": x} for x in loans]})

        calls = _calls()
        responses = await asyncio.gather(*(post(loans) for loans in requests))
        batched = _calls() - calls
        *alongside, rejected = await asyncio.gather(
            *(post(loans) for loans in requests),
            client.post(url, json={"instances": [without_loan]}),
            return_exceptions=True,
        )
    assert batched[0] < 16 and batched[1] >= 1, "fewer model calls than requests, some of more rows than any request"
    for answers in (responses, alongside):
        assert [r.json()["predictions"] for r in answers if isinstance(r, httpx.Response)] == [
            [int(x > 100_000) for x in loans] for loans in requests
        ]
    assert isinstance(rejected, httpx.Response) and rejected.status_code == 422
    assert [error["loc"] for error in rejected.json()["detail"]] == [["body", "instances", 0, "loan"]]
    records = await read_topic(settings, "predictions", 2 * sum(map(len, requests)))
    answered = [r for r in [*responses, *alongside] if isinstance(r, httpx.Response)]
    assert sorted(r.key or "" for r in records) == sorted(i for r in answered for i in r.json()["prediction_ids"])


def _calls() -> np.ndarray:
    """Model calls on the REST path so far, and those of more than 4 rows (more than any request here)."""
    count = REGISTRY.get_sample_value("driftloop_predict_batch_rows_count") or 0.0
    small = REGISTRY.get_sample_value("driftloop_predict_batch_rows_bucket", {"le": "4.0"}) or 0.0
    return np.array([count, count - small])


async def _predict_after_the_producer_stopped(
    settings: DriftloopSettings, acks: Literal["wait", "async"]
) -> tuple[int, int]:
    """Status of a request before and after the producer can no longer deliver."""
    app = create_app(DeploymentSettings(**settings.model_dump(), prediction_acks=acks))
    body = {"instances": [APPLICATION, APPLICATION]}
    async with running(app) as client:
        before = await client.post(f"/v1/models/{MODEL}/predict", json=body)
        await app.state.serving.log.drain()
        await app.state.runtime.bus.stop()
        after = await client.post(f"/v1/models/{MODEL}/predict", json=body)
        await app.state.serving.log.drain()
    return before.status_code, after.status_code


async def test_a_failed_publish_fails_the_request_with_wait_acks_and_is_counted_with_async(
    settings: DriftloopSettings, bus: Bus
) -> None:
    await bus.publish(_promoted(1, _artifact(settings, "r1", constant=1)), MODEL)
    failures = _failures()
    assert await _predict_after_the_producer_stopped(settings, "wait") == (200, 503)
    assert _failures() == failures + 2
    assert await _predict_after_the_producer_stopped(settings, "async") == (200, 200)
    assert _failures() == failures + 4


async def test_a_tampered_or_escaping_artifact_aborts_its_rollout_and_the_current_model_keeps_serving(
    settings: DriftloopSettings, bus: Bus
) -> None:
    await bus.publish(_promoted(1, _artifact(settings, "r1", constant=1)), MODEL)
    uri, recorded = _artifact(settings, "r2", constant=0)
    # The bytes change after registration: another model written over the same key.
    store = open_store(settings)
    store.put(store.uri(f"models/{MODEL}/r2/model.skops"), store.get(_artifact(settings, "r3", constant=1)[0]))
    big_loan = {**APPLICATION, "loan": 190_000.0}
    async with running(create_app(DeploymentSettings(**settings.model_dump()))) as client:
        await bus.publish(_promoted(2, (uri, recorded)), MODEL)
        await bus.publish(_promoted(3, ("file:///etc/hostname", sha256_hex(b""))), MODEL)
        rollouts = [parse_internal(r.value) for r in await read_topic(settings, "deployment.events", 4)]
        response = await client.post(f"/v1/models/{MODEL}/predict", json={"instances": [big_loan]})
        status = (await client.get(f"/v1/deployments/{MODEL}")).json()
    aborted = [r for r in rollouts if isinstance(r, RolloutAborted)]
    assert [(r.version, type(r)) for r in rollouts] == [
        (2, RolloutStarted),
        (2, RolloutAborted),
        (3, RolloutStarted),
        (3, RolloutAborted),
    ]
    assert "SHA-256" in aborted[0].reason and recorded in aborted[0].reason
    assert "outside the store" in aborted[1].reason
    assert response.json()["model_version"] == 1 and response.json()["predictions"] == [1]
    assert status["version"] == 1 and status["artifact_sha256"] is not None
