"""Every service killed with SIGKILL in turn, and the broker restarted, while events flow at 1,000 a second.

One stack of six services as ``driftloop up`` runs and supervises them, a first champion serving, then the
producer starts and goes on until ten seconds after the broker is back. Monitoring, features, ingestion and
deployment are killed, each once the one before is ready again; then training in the middle of a run it
claimed, the registry as soon as that run has completed, and last the broker (SIGKILL too: Tansu with its
log in S3, or Apache Kafka with its log on disk). Afterwards every stage is counted by event id.

Duplicates on a topic are allowed where the design says its consumers recognise them: on
``events.validated`` (features skips an event id its entity has seen), ``features`` and ``predictions``
(deployment skips an event id it has handled; the join keeps one entry per event and scores each version of
a prediction once), monitoring's outcomes (the tracker drops an outcome whose join record it has applied),
``training.runs`` and ``registry.events`` (their outbox relays may send a row twice after a kill; the
consumers key by run and version). What downstream state counted must be exact: every event in its
entity's count once, every event scored once, one run per request and one version per run.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from driftloop.contracts import ModelVersionRegistered, TrainingRunCompleted, parse_internal
from tests.bench.bench_loop import first_champion
from tests.chaos.harness import (
    MODEL,
    DurableBroker,
    Outcomes,
    Producer,
    Tally,
    admin_headers,
    by_event,
    chaos_stack,
    entity_counts,
    expected_entity_counts,
    note,
    observed,
    read_all,
    supervised,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(2400)]

RATE = 1000.0
WARMUP = 1500
#: Seconds the producer goes on after the broker is back.
AFTER_BROKER = 10.0


async def _run_status(client: httpx.AsyncClient, url: str, run_id: str) -> str:
    response = await client.get(f"{url}/v1/runs/{run_id}")
    return str(response.json()["status"]) if response.status_code == 200 else "unknown"


async def _runs(client: httpx.AsyncClient, url: str) -> set[str]:
    return {str(r["run_id"]) for r in (await client.get(f"{url}/v1/runs")).json()}


async def _new_run(client: httpx.AsyncClient, url: str, known: set[str], timeout: float = 120.0) -> str:
    """The one run training has recorded beside ``known``, once it has."""
    deadline = time.monotonic() + timeout
    while not (new := await _runs(client, url) - known):
        assert time.monotonic() < deadline, "the retrain request recorded no run"
        await asyncio.sleep(0.25)
    (run_id,) = new
    return run_id


async def _until_status(client: httpx.AsyncClient, url: str, run_id: str, status: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (now := await _run_status(client, url, run_id)) != status:
        assert time.monotonic() < deadline, f"run {run_id} is {now}, not {status}, after {timeout:.0f}s"
        assert now not in ("failed", "completed"), f"run {run_id} ended {now}"
        await asyncio.sleep(0.2)


async def test_every_service_killed_and_the_broker_restarted_under_load_lose_nothing_and_count_nothing_twice(
    broker_kind: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    broker = DurableBroker(broker_kind, tmp_path / "broker")
    await asyncio.to_thread(broker.start)
    try:
        stack = chaos_stack(broker, tmp_path / "home")
        async with supervised(stack) as supervisor:
            settings = stack.settings
            await first_champion(stack, WARMUP)
            outcomes = Outcomes(settings)
            await outcomes.start()
            producer = Producer(settings, RATE)
            stop = asyncio.Event()
            producing = asyncio.create_task(producer.run(stop))
            timeline: dict[str, float] = {}
            training, registry = stack.children["training"].url, stack.children["registry"].url
            async with httpx.AsyncClient(timeout=30, headers=admin_headers(settings)) as client:
                await asyncio.sleep(5)
                # Monitoring and features first, while their changelogs are short: a restart reads them whole.
                for name in ("monitoring", "features", "ingestion", "deployment"):
                    timeline[name] = note(name, await supervisor.back(name, supervisor.kill(name)))
                known = await _runs(client, training)
                (await client.post(f"{training}/v1/models/{MODEL}/retrain", json={})).raise_for_status()
                run_id = await _new_run(client, training, known)
                await _until_status(client, training, run_id, "running", 120)
                # Killed with its run claimed: the run is taken up again and finished once.
                timeline["training"] = note("training", await supervisor.back("training", supervisor.kill("training")))
                await _until_status(client, training, run_id, "completed", 300)
                # Killed with the run's result on its way in: one version for it, gated once.
                timeline["registry"] = note("registry", await supervisor.back("registry", supervisor.kill("registry")))
                timeline["broker away"] = note("broker away", await asyncio.to_thread(broker.restart))
                # The stages reconnect, rejoin their groups and take up their backlog under the same load.
                await asyncio.sleep(AFTER_BROKER)
                stop.set()
                await producing
                sent = producer.event_ids
                assert producer.acked == set(range(len(sent)))
                note(f"{len(sent)} events sent")
                timeline["drain"] = note("all scored", await outcomes.until_scored(sent, timeout=1200))
                versions = (await client.get(f"{registry}/v1/models/{MODEL}/versions")).json()
                runs = (await client.get(f"{training}/v1/runs")).json()
            counted = await observed(stack, outcomes.per_version())
            entities = await entity_counts(stack)
            restarts = {name: child.restarts for name, child in stack.children.items()}
            # Every service is ready again: each consumer in its group and making progress.
            await supervisor.all_ready(120)

        warm = {f"warm-{i}" for i in range(WARMUP)}
        validated = Tally.of(
            by_event(await read_all(settings, "events.validated"), lambda e: e["event_id"]), sent | warm
        )
        vectors = Tally.of(by_event(await read_all(settings, "features"), lambda v: v["event_id"]), sent | warm)
        predicted = by_event(await read_all(settings, "predictions"), lambda p: p["source_event_id"])
        predictions = Tally.of(predicted, sent)
        deadletters = await read_all(settings, "events.deadletter")
        run_records = await read_all(settings, "training.runs")
        registry_records = await read_all(settings, "registry.events")
        run_events = [parse_internal(r.value) for r in run_records]
        registry_events = [parse_internal(r.value) for r in registry_records]
        await outcomes.stop()
    finally:
        await asyncio.to_thread(broker.stop)

    scored = {event for event, _ in outcomes.sources if event in sent}
    report = {
        "broker": broker_kind,
        "events sent": len(sent),
        "producer events/s": round(producer.achieved),
        "records sent again": producer.resent,
        "validated": validated,
        "feature vectors": vectors,
        "predictions": predictions,
        "outcome records": outcomes.records,
        "scored (event, version)": outcomes.per_version(),
        "monitoring counted": counted,
        "training.runs records / events": (len(run_records), len({e.event_id for e in run_events})),
        "registry.events records / events": (len(registry_records), len({e.event_id for e in registry_events})),
        "restarts": restarts,
        "seconds": {k: round(v, 1) for k, v in timeline.items()},
        "test seconds": round(time.monotonic() - started),
    }
    print(json.dumps(report, default=lambda o: o.__dict__))

    assert [r.value for r in deadletters] == []
    # Ingestion: every event validated (the warm-up's too), none invented.
    assert (validated.distinct, validated.missing, validated.extra) == (len(sent) + WARMUP, 0, 0), report
    # Features: one vector per event, and every event counted once in its entity's state.
    assert (vectors.distinct, vectors.missing, vectors.extra) == (len(sent) + WARMUP, 0, 0), report
    assert entities == expected_entity_counts(WARMUP, len(sent))
    # Deployment: every event predicted; of the warm-up only what came after the first champion was loaded.
    assert (predictions.distinct, predictions.missing) == (len(sent), 0), report
    assert set(predicted) - sent <= warm
    # Monitoring: every event scored, each (event, version) by one join record, counted once by the tracker.
    assert scored == sent
    assert outcomes.scored_twice() == []
    assert counted == outcomes.per_version(), report
    # Training and the registry: the two runs asked for, each completed once, one version for each.
    assert sorted(r["status"] for r in runs) == ["completed", "completed"], runs
    completed = {e.run_id for e in run_events if isinstance(e, TrainingRunCompleted)}
    assert completed == {r["run_id"] for r in runs}
    registered = {(e.version, e.run_id) for e in registry_events if isinstance(e, ModelVersionRegistered)}
    assert sorted(registered) == sorted((v["version"], v["run_id"]) for v in versions)
    assert sorted(v["version"] for v in versions) == [1, 2]
    assert {v["run_id"] for v in versions} == completed
    assert restarts == {"ingestion": 1, "features": 1, "training": 1, "registry": 1, "deployment": 1, "monitoring": 1}
