"""Training on a real broker and database: a burst of drift gives one run; each run is reported on training.runs."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta

from prometheus_client import REGISTRY
from river.datasets import synth

from driftloop.artifacts import open_store, read_verified
from driftloop.auth import Role
from driftloop.bus import Bus
from driftloop.config import TrainingPolicy, load_config
from driftloop.contracts import (
    DriftDetected,
    FeatureVector,
    RetrainRequested,
    TrainingRunCompleted,
    TrainingRunFailed,
    parse_internal,
    utcnow,
)
from driftloop.modeling import ModelArtifact
from driftloop.offline import OfflineStore
from driftloop.reference import ReferenceSample
from driftloop.services.training.main import create_app
from driftloop.services.training.settings import TrainingSettings
from driftloop.settings import DriftloopSettings
from tests.fixtures.postgres import PostgresServer
from tests.support import issue_token, read_topic, running

MODEL = "loan-approval"


def _fill_offline_store(settings: DriftloopSettings, n: int) -> None:
    start = utcnow() - timedelta(minutes=30)
    vectors = [
        FeatureVector(
            event_id=f"e{i}",
            entity_id=f"c{i % 50}",
            event_time=start + timedelta(seconds=i),
            feature_view="applications",
            occurred_at=start + timedelta(seconds=i),
            features={
                **{k: (float(v) if isinstance(v, float) else int(v)) for k, v in x.items()},
                "entity_count": 1.0,
                "entity_mean_loan": float(x["loan"]),
            },
            label=int(y),
        )
        for i, (x, y) in enumerate(synth.Agrawal(seed=3).take(n))
    ]
    OfflineStore(open_store(settings), "applications").append_vectors(
        [v.model_dump() for v in vectors], partition=0, first_offset=0
    )


def _drift() -> DriftDetected:
    return DriftDetected(
        model_name=MODEL,
        model_version=1,
        kind="concept",
        detector="cusum",
        observations=900,
        window=300,
        accuracy_before=0.99,
        accuracy_after=0.5,
        change_point_time=utcnow() - timedelta(minutes=20),
    )


async def _runs(client: object, expected: int) -> list[dict[str, object]]:
    for _ in range(100):
        runs: list[dict[str, object]] = (await client.get("/v1/runs")).json()  # type: ignore[attr-defined]
        if sum(r["status"] in ("completed", "debounced", "failed") for r in runs) >= expected:
            return runs
        await asyncio.sleep(0.3)
    raise AssertionError(f"runs did not finish: {runs}")


async def test_a_drift_after_the_last_drift_run_ended_waits_out_the_cooldown_instead_of_being_dropped(
    settings: DriftloopSettings, bus: Bus
) -> None:
    """Monitoring re-arms and raises again after a failed run or a rejected challenger; inside the cooldown
    that new drift used to be debounced for good, leaving the drifted champion serving with nothing to try."""
    _fill_offline_store(settings, 1800)
    first, again = _drift(), _drift()
    async with running(create_app(TrainingSettings(**settings.model_dump()))) as client:
        await bus.publish(first, MODEL)
        runs = await _runs(client, 1)
        await bus.publish(again, MODEL)
        for _ in range(100):
            runs = (await client.get("/v1/runs")).json()
            if len(runs) == 2:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.5)  # a worker poll or more: a due run would have been claimed by now
        runs = (await client.get("/v1/runs")).json()
    ended = next(r for r in runs if r["correlation_id"] == first.correlation_id)
    waiting = next(r for r in runs if r["correlation_id"] == again.correlation_id)
    assert ended["status"] == "completed" and ended["not_before"] is None
    assert waiting["status"] == "queued" and waiting["started_at"] is None, waiting
    cooldown = load_config(settings.config).drift.cooldown
    assert datetime.fromisoformat(waiting["not_before"]) == datetime.fromisoformat(ended["created_at"]) + cooldown


async def test_a_burst_of_concept_drift_gives_one_run_since_the_change_point_and_data_drift_gives_none(
    settings: DriftloopSettings, bus: Bus
) -> None:
    _fill_offline_store(settings, 1800)
    drifts = [_drift() for _ in range(3)]
    covariate_shift = _drift().model_copy(update={"kind": "data", "detector": "ks", "feature": "salary"})
    async with running(create_app(TrainingSettings(**settings.model_dump()))) as client:
        for drift in [covariate_shift, *drifts]:
            await bus.publish(drift, MODEL)
        runs = await _runs(client, 3)
        completed = [parse_internal(r.value) for r in await read_topic(settings, "training.runs", 1)]
    assert sorted(r["status"] for r in runs) == ["completed", "debounced", "debounced"]
    assert len(completed) == 1 and isinstance(completed[0], TrainingRunCompleted)
    run = completed[0]
    assert run.trigger == "drift" and run.causation_id == drifts[0].event_id
    assert run.correlation_id == drifts[0].correlation_id
    assert run.data_window.start is not None and run.data_window.start >= drifts[0].change_point_time
    assert run.data_window.rows == run.data_window.train_rows + run.data_window.holdout_rows
    assert 0 < run.data_window.rows < 1800, "only rows since the change point"
    assert run.metrics["accuracy"] > 0.9
    store = open_store(settings)
    artifact = ModelArtifact.from_bytes(read_verified(store, run.artifact_uri, run.artifact_sha256))
    assert artifact.run_id == run.run_id and artifact.feature_names == run.feature_names
    assert run.reference_uri is not None and run.reference_uri.startswith(run.artifact_uri.rsplit("/", 1)[0])
    reference = ReferenceSample.from_bytes(store.get(run.reference_uri))
    assert reference.run_id == run.run_id and reference.window_rows == run.data_window.rows
    assert set(reference.features) == set(run.feature_names)
    assert {len(column) for column in reference.features.values()} == {run.data_window.rows}, "fewer than 2,000"
    assert len(reference.predictions) == len(reference.correct) == run.data_window.rows, "out of fold, each row"
    assert abs(sum(reference.correct) / len(reference.correct) - run.metrics["accuracy"]) < 0.05
    # The holdout rows carry their times, all after the training rows, so the registry can tell what a model saw.
    holdout = [json.loads(line) for line in store.get(run.holdout_uri).splitlines()]
    times = sorted(datetime.fromisoformat(r["event_time"]) for r in holdout)
    assert len(holdout) == run.data_window.holdout_rows and times[-1] == run.data_window.end
    assert run.refit_artifact_uri is not None and run.refit_artifact_uri != run.artifact_uri
    refitted = ModelArtifact.from_bytes(read_verified(store, run.refit_artifact_uri, run.refit_artifact_sha256))
    assert refitted.run_id == run.run_id and refitted.feature_names == run.feature_names


async def test_manual_retrain_travels_over_kafka_and_a_run_without_enough_data_fails_loudly(
    settings: DriftloopSettings,
) -> None:
    config = load_config(settings.config)
    impatient = config.model_copy(update={"training": TrainingPolicy(wait_for_data=timedelta(seconds=1))})
    async with running(create_app(TrainingSettings(**settings.model_dump()), impatient)) as client:
        assert (await client.post("/v1/models/nope/retrain")).status_code == 404
        alice = await asyncio.to_thread(issue_token, settings, Role.operator, "alice")
        accepted = await client.post(
            f"/v1/models/{MODEL}/retrain",
            json={"requested_by": "mallory", "since": utcnow().isoformat()},
            headers={"Authorization": f"Bearer {alice}"},
        )
        assert accepted.status_code == 202
        requests = await read_topic(settings, "training.requests", 1)
        assert requests[0].headers["ce_id"] == accepted.json()["request_id"]
        assert requests[0].headers["ce_type"] == "io.driftloop.training.requested.v1"
        runs = await _runs(client, 1)
        failed = [parse_internal(r.value) for r in await read_topic(settings, "training.runs", 1)]
        assert runs[0]["requested_by"] == "alice", "who asked is the token's name, not the body's claim"
        assert runs[0]["status"] == "failed"
        assert isinstance(failed[0], TrainingRunFailed) and "labelled rows" in failed[0].error
        one = await client.get(f"/v1/runs/{runs[0]['run_id']}")
        assert one.json()["error"] == failed[0].error
        assert (await client.get("/v1/runs/missing")).status_code == 404


def _worker_retries() -> float:
    labels = {"service": "training", "stage": "training.worker", "reason": "database"}
    return REGISTRY.get_sample_value("driftloop_retries_total", labels) or 0.0


async def test_a_run_under_way_waits_out_a_database_outage_and_completes_once(
    settings: DriftloopSettings, bus: Bus
) -> None:
    database = PostgresServer()
    database.create()
    training = TrainingSettings(
        **{
            **settings.model_dump(),
            "database_url": database.url,
            "data_poll_seconds": 0.2,
            "retry_backoff_seconds": 0.1,
            "retry_backoff_max_seconds": 0.5,
        }
    )
    try:
        async with running(create_app(training)) as client:
            await bus.publish(RetrainRequested(model_name=MODEL, reason="manual", requested_by="ops"), MODEL)
            for _ in range(100):
                runs = (await client.get("/v1/runs")).json()
                if runs and runs[0]["status"] == "waiting_for_data":
                    break
                await asyncio.sleep(0.2)
            assert [r["status"] for r in runs] == ["waiting_for_data"]

            # The database goes away while the run waits for its rows, and the rows arrive meanwhile.
            retries_before = _worker_retries()
            database.stop()
            try:
                for _ in range(100):
                    if _worker_retries() >= retries_before + 3:
                        break
                    await asyncio.sleep(0.2)
                _fill_offline_store(settings, 1800)
            finally:
                database.start()

            runs = await _runs(client, 1)
            announced = [parse_internal(r.value) for r in await read_topic(settings, "training.runs", 1)]
    finally:
        database.remove()
    assert [r["status"] for r in runs] == ["completed"]
    assert [type(e) for e in announced] == [TrainingRunCompleted]
    assert announced[0].run_id == runs[0]["run_id"] and announced[0].data_window.rows == 1800
    assert _worker_retries() >= retries_before + 3, "the worker never met the outage"
