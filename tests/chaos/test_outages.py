"""Each retriable dependency stopped for 30 s in the middle of a training run, while events and labels flow.

One stack on PostgreSQL, an S3 artifact store (moto's server) and a broker whose log outlives it. For each
of the database, the object store and the broker in turn: a retrain is asked for on rows from a few
seconds ahead, and once its run waits for them the dependency is stopped for 30 s, then started again.
The run must complete once and its version be registered once; nothing may be dead-lettered; no service
may exit; and at the end every event is validated, featured, predicted and scored exactly as often as if
nothing had happened.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

import httpx
import pytest
from moto.server import ThreadedMotoServer

from driftloop.bus import Bus
from driftloop.contracts import (
    ModelVersionRegistered,
    RetrainRequested,
    TrainingRunCompleted,
    parse_internal,
    utcnow,
)
from tests.bench.bench_loop import first_champion
from tests.chaos.harness import (
    MODEL,
    DurableBroker,
    Outcomes,
    Producer,
    Tally,
    by_event,
    chaos_stack,
    entity_counts,
    expected_entity_counts,
    note,
    observed,
    read_all,
    supervised,
)
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.s3 import S3Endpoint

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(2400)]

#: Events a second: what the loop keeps up with on two cores, so the outages, not a backlog, are measured.
RATE = 250.0
WARMUP = 1500
OUTAGE = 30.0
#: How far ahead of its request a run's rows start.
AHEAD = timedelta(seconds=5)


async def _runs(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    return {str(r["run_id"]): str(r["status"]) for r in (await client.get(f"{url}/v1/runs")).json()}


async def _waiting(client: httpx.AsyncClient, training: str, known: dict[str, str]) -> bool:
    """A run beside ``known`` has been claimed and waits for its rows."""
    return "waiting_for_data" in {s for r, s in (await _runs(client, training)).items() if r not in known}


async def _settled(client: httpx.AsyncClient, training: str, registry: str, known: dict[str, str]) -> bool:
    """The run beside ``known`` has ended, and the registry has a version for every completed run."""
    try:
        runs = await _runs(client, training)
        listed = await client.get(f"{registry}/v1/models/{MODEL}/versions")
    except httpx.HTTPError:
        return False
    ended = len(runs) == len(known) + 1 and set(runs.values()) <= {"completed", "failed"}
    completed = sum(status == "completed" for status in runs.values())
    return ended and listed.status_code == 200 and len(listed.json()) == completed


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Wait for ``check`` to hold; the seconds that took."""
    began = time.monotonic()
    while not await check():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(0.5)
    return time.monotonic() - began


async def test_the_database_object_store_and_broker_each_down_for_30s_mid_run_lose_nothing_and_dead_letter_nothing(
    broker_kind: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    database = PostgresServer()
    database.create()
    # In this process, so it keeps its buckets while it is stopped.
    store = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    store.start()
    host, store_port = store.get_host_and_port()
    s3 = S3Endpoint(endpoint=f"{host}:{store_port}")
    broker = DurableBroker(broker_kind, tmp_path / "broker")
    await asyncio.to_thread(broker.start)
    timeline: dict[str, float] = {}
    try:
        stack = chaos_stack(
            broker,
            tmp_path / "home",
            database_url=database.url,
            artifact_uri=f"s3://chaos-{uuid.uuid4().hex[:8]}/artifacts",
            DRIFTLOOP_S3_ENDPOINT=s3.endpoint,
            DRIFTLOOP_S3_ACCESS_KEY=s3.access_key,
            DRIFTLOOP_S3_SECRET_KEY=s3.secret_key,
            DRIFTLOOP_S3_SECURE="false",
        )
        async with supervised(stack) as supervisor:
            settings = stack.settings
            await first_champion(stack, WARMUP)
            outcomes = Outcomes(settings)
            await outcomes.start()
            producer = Producer(settings, RATE)
            stop = asyncio.Event()
            producing = asyncio.create_task(producer.run(stop))
            bus = Bus(settings, "chaos-test")
            await bus.start()
            training, registry = stack.children["training"].url, stack.children["registry"].url

            def stop_store() -> None:
                store.stop()

            def start_broker() -> None:
                broker.process.start()

            def start_store() -> None:
                nonlocal store
                store = ThreadedMotoServer(ip_address="127.0.0.1", port=store_port, verbose=False)
                store.start()

            outages: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
                ("database", database.stop, database.start),
                ("object store", stop_store, start_store),
                ("broker", broker.process.stop, start_broker),
            ]
            async with httpx.AsyncClient(timeout=30) as client:
                await asyncio.sleep(5)
                for name, down, up in outages:
                    known = await _runs(client, training)
                    # On rows from a few seconds ahead, which come while the dependency is down (or, for the
                    # broker and the object store, once it is back): the run is under way across the outage.
                    request = RetrainRequested(
                        model_name=MODEL, reason="manual", requested_by="chaos", since=utcnow() + AHEAD
                    )
                    # Over Kafka, as the retrain endpoint sends it: the endpoint checks tokens in the database.
                    await bus.publish(request, MODEL)
                    await _until(
                        f"a run waiting for rows before the {name} outage",
                        partial(_waiting, client, training, known),
                        120,
                    )
                    await asyncio.to_thread(down)
                    note(f"{name} stopped")
                    await asyncio.sleep(OUTAGE)
                    await asyncio.to_thread(up)
                    note(f"{name} started")

                    timeline[name] = note(
                        f"run after the {name} outage done",
                        await _until(name, partial(_settled, client, training, registry, known), 300),
                    )
                await asyncio.sleep(5)
                stop.set()
                await producing
                await bus.stop()
                sent = producer.event_ids
                assert producer.acked == set(range(len(sent)))
                note(f"{len(sent)} events sent")
                timeline["drain"] = note("all scored", await outcomes.until_scored(sent, timeout=900))
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
        store.stop()
        database.remove()

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
        "runs": sorted((r["trigger"], r["status"]) for r in runs),
        "versions": sorted((v["version"], v["status"]) for v in versions),
        "dead letters": len(deadletters),
        "restarts": restarts,
        "seconds": {k: round(v, 1) for k, v in timeline.items()},
        "test seconds": round(time.monotonic() - started),
    }
    print(json.dumps(report, default=lambda o: o.__dict__))

    assert [r.value for r in deadletters] == []
    assert (validated.distinct, validated.missing, validated.extra) == (len(sent) + WARMUP, 0, 0), report
    assert (vectors.distinct, vectors.missing, vectors.extra) == (len(sent) + WARMUP, 0, 0), report
    assert entities == expected_entity_counts(WARMUP, len(sent))
    assert (predictions.distinct, predictions.missing) == (len(sent), 0), report
    assert set(predicted) - sent <= warm
    assert scored == sent
    assert outcomes.scored_twice() == []
    assert counted == outcomes.per_version(), report
    # The first champion's run and one per outage, each completed once, each with its one version.
    assert sorted(r["status"] for r in runs) == ["completed"] * 4, runs
    completed = {e.run_id for e in run_events if isinstance(e, TrainingRunCompleted)}
    assert completed == {r["run_id"] for r in runs}
    registered = {(e.version, e.run_id) for e in registry_events if isinstance(e, ModelVersionRegistered)}
    assert sorted(registered) == sorted((v["version"], v["run_id"]) for v in versions)
    assert sorted(v["version"] for v in versions) == [1, 2, 3, 4]
    assert {v["run_id"] for v in versions} == completed
    assert restarts == dict.fromkeys(stack.children, 0), "a dependency's outage should not have killed a service"
