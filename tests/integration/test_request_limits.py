"""Input limits on running services: a huge, deep or over-long body is refused before it is parsed, never a 500.

Ingestion and deployment on a real broker, with the settings every service shares; and a record on
events.raw over the record limit is dead-lettered with the reason while the others flow.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from driftloop.bus import Bus
from driftloop.contracts import DeadLetter, EventValidated, utcnow
from driftloop.services.deployment.main import create_app as deployment_app
from driftloop.services.deployment.settings import DeploymentSettings
from driftloop.services.ingestion.main import create_app as ingestion_app
from driftloop.services.ingestion.settings import IngestionSettings
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION, read_topic, running

MIB = 1024 * 1024
CHUNK = 64 * 1024


class Body:
    """A 20 MB request body sent in chunks, counting how many the server pulled."""

    def __init__(self, size: int = 20 * MIB) -> None:
        self.chunks = size // CHUNK
        self.pulled = 0

    async def stream(self) -> AsyncIterator[bytes]:
        yield b'[{"event_id": "'
        for _ in range(self.chunks):
            self.pulled += 1
            yield b"x" * CHUNK


def _event(event_id: str) -> dict[str, object]:
    return {"event_id": event_id, "entity_id": "a-1", "event_time": utcnow().isoformat(), "features": APPLICATION}


def _deep(levels: int) -> bytes:
    return b'{"event_id": "deep", "features": ' + b"[" * levels + b"]" * levels + b"}"


async def test_ingestion_refuses_a_20_mb_body_while_it_streams_with_the_default_limit(
    settings: DriftloopSettings,
) -> None:
    ingestion = IngestionSettings(**settings.model_dump())
    assert ingestion.max_body_bytes == 4 * MIB, "the default"
    chunked, declared = Body(), Body()
    async with running(ingestion_app(ingestion)) as client:
        streamed = await client.post("/v1/events", content=chunked.stream())
        announced = await client.post(
            "/v1/events", content=declared.stream(), headers={"content-length": str(20 * MIB)}
        )
    assert streamed.status_code == announced.status_code == 413
    assert chunked.pulled <= 4 * MIB // CHUNK + 1 < chunked.chunks, "read past the limit"
    assert declared.pulled == 0, "a declared length over the limit is refused before reading"
    assert await read_topic(settings, "events.raw", 1, timeout=2) == []


async def test_ingestion_answers_deep_json_with_422_naming_the_reason_and_long_batches_with_413(
    settings: DriftloopSettings,
) -> None:
    ingestion = IngestionSettings(**{**settings.model_dump(), "max_json_depth": 8, "max_batch": 5})
    ndjson = {"content-type": "application/x-ndjson"}
    async with running(ingestion_app(ingestion)) as client:
        deep = await client.post("/v1/events", content=_deep(1000), headers={"content-type": "application/json"})
        deepest = await client.post("/v1/events", content=b"[" * 100_000 + b"]" * 100_000)
        deep_label = await client.post("/v1/labels", content=b'{"event_id": "e", "label": ' + b"[" * 50 + b"]" * 50)
        array = await client.post("/v1/events", json=[_event(f"a{i}") for i in range(6)])
        lines = await client.post(
            "/v1/events", content="\n".join(json.dumps(_event(f"n{i}")) for i in range(6)), headers=ndjson
        )
        within = await client.post(
            "/v1/events", content="\n".join(json.dumps(_event(f"ok{i}")) for i in range(5)), headers=ndjson
        )
    for response in (deep, deepest, deep_label):
        assert response.status_code == 422
        assert response.json()["detail"] == [
            {"loc": ["body"], "msg": "JSON nested more than 8 levels deep", "type": "value_error"}
        ]
    assert array.status_code == 413 and "6 items; at most 5" in array.json()["detail"]
    assert lines.status_code == 413 and "at most 5 items" in lines.json()["detail"]
    assert within.status_code == 202 and within.json()["accepted"] == 5
    published = await read_topic(settings, "events.raw", 5)
    assert sorted(json.loads(r.value)["event_id"] for r in published) == [f"ok{i}" for i in range(5)]


async def test_deployment_holds_predict_and_infer_to_the_same_limits(settings: DriftloopSettings) -> None:
    deployment = DeploymentSettings(
        **{**settings.model_dump(), "max_body_bytes": 64 * 1024, "max_json_depth": 6, "max_batch": 5}
    )
    url = "/v1/models/loan-approval/predict"
    tensor = {"name": "loan", "shape": [6], "datatype": "FP64", "data": [1.0] * 6}
    async with running(deployment_app(deployment)) as client:
        big = await client.post(url, json={"instances": [{"note": "x" * 70_000}]})
        deep = await client.post(url, content=b'{"instances": [{"a": ' + b"[" * 900 + b"]" * 900 + b"}]}")
        many = await client.post(url, json={"instances": [APPLICATION] * 6})
        infer = await client.post("/v2/models/loan-approval/infer", json={"inputs": [tensor]})
        allowed = await client.post(url, json={"instances": [APPLICATION] * 5})
        health = await client.get("/healthz")
    assert big.status_code == 413
    assert deep.status_code == 422 and "more than 6 levels" in deep.json()["detail"][0]["msg"]
    assert many.status_code == 413 and infer.status_code == 413
    assert allowed.status_code == 404, "within the limits the request reaches the endpoint (no model is loaded)"
    assert health.status_code == 200


async def test_a_record_over_the_size_limit_on_events_raw_is_dead_lettered_and_the_others_flow(
    settings: DriftloopSettings, bus: Bus
) -> None:
    ingestion = IngestionSettings(**{**settings.model_dump(), "max_record_bytes": 8 * 1024})
    huge = {**_event("huge"), "features": {**APPLICATION, "note": "x" * 20_000}}
    for event in (_event("small-1"), huge, _event("small-2")):
        await bus.send("events.raw", json.dumps(event).encode(), "a-1", [])
    async with running(ingestion_app(ingestion)):
        validated = await read_topic(settings, "events.validated", 2)
        letters = await read_topic(settings, "events.deadletter", 1)
    assert [EventValidated.model_validate_json(r.value).event_id for r in validated] == ["small-1", "small-2"]
    letter = DeadLetter.model_validate_json(letters[0].value)
    assert letter.offset == 1 and letter.source_topic == "events.raw"
    assert "over the 8192-byte limit" in letter.reason
    assert len(letter.payload) == 4096 and letter.payload.startswith('{"event_id": "huge"')
