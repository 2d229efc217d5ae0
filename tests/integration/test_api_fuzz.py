"""schemathesis against every service's OpenAPI document: no generated request gets a server error.

Each service runs in-process on the real broker, served by uvicorn on a port of this host, with something
in its state to find (a champion, a registered version, an entity's features, a labelled prediction), so
requests naming it reach past the 404s. schemathesis reads the service's own ``/openapi.json`` over HTTP
and sends cases it generates from it: conforming ones, ones that break the document (wrong types, missing
fields, out-of-range numbers) and conforming ones aimed at what the service holds; deployment also gets
whole rows of the champion's features, so scoring itself is fuzzed, not only the request's shape. Every
request carries an admin token, so each one gets past the role check to the code behind it. The registry
and training, which keep rows, run on SQLite and on PostgreSQL: each refuses input the other takes (a
64-bit overflow, a NUL character). A second test sends the inputs that were server errors before they
were fixed, each by name, and checks the 422 each gets instead.

Hypothesis runs derandomized; schemathesis also draws from Python's global random, which the services'
Kafka clients draw from too, so two runs send mostly, not exactly, the same cases.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Err
from schemathesis.schemas import APIOperation

from driftloop.auth import Role
from driftloop.bus import Bus, ensure_topics
from driftloop.contracts import EventValidated, ModelPromoted, Prediction, utcnow
from driftloop.services.deployment.main import create_app as deployment_app
from driftloop.services.deployment.settings import DeploymentSettings
from driftloop.services.features.main import create_app as features_app
from driftloop.services.features.settings import FeaturesSettings
from driftloop.services.ingestion.main import create_app as ingestion_app
from driftloop.services.ingestion.settings import IngestionSettings
from driftloop.services.monitoring.main import create_app as monitoring_app
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.services.registry.main import create_app as registry_app
from driftloop.services.registry.settings import RegistrySettings
from driftloop.services.training.main import create_app as training_app
from driftloop.services.training.settings import TrainingSettings
from driftloop.settings import DriftloopSettings
from tests.support import APPLICATION, announced_run, issue_token, serving

#: Cases per operation: enough to meet the classic 500s (a 2**70, a NUL, an Infinity, a missing feature,
#: two tensors of one name) while the module stays well under a minute.
EXAMPLES = 20
MODEL = "loan-approval"
JSON = {"content-type": "application/json"}
ENTITY = "c-1"

Operation = APIOperation[Any, Any, Any, Any]
Row = dict[str, Any]
#: A conforming request body made from rows of the champion's features.
Body = Callable[[list[Row]], Any]


async def _seed_deployment(settings: DriftloopSettings, bus: Bus) -> None:
    run = await asyncio.to_thread(announced_run, settings, "run-1", False, 1)
    champion = ModelPromoted(
        model_name=MODEL, version=1, artifact_uri=run.artifact_uri, artifact_sha256=run.artifact_sha256, actor="gate"
    )
    await bus.publish(champion, MODEL)


async def _seed_registry(settings: DriftloopSettings, bus: Bus) -> None:
    await bus.publish(await asyncio.to_thread(announced_run, settings, "run-1", False, 1), MODEL)


async def _seed_features(_settings: DriftloopSettings, bus: Bus) -> None:
    event = EventValidated(event_id="e-1", entity_id=ENTITY, event_time=utcnow(), features=dict(APPLICATION))
    await bus.publish(event, ENTITY)


async def _seed_monitoring(_settings: DriftloopSettings, bus: Bus) -> None:
    prediction = Prediction(
        source_event_id="e-1", model_name=MODEL, model_version=1, channel="stream", prediction=1, label=1
    )
    await bus.publish(prediction, prediction.event_id)


async def _nothing(_settings: DriftloopSettings, _bus: Bus) -> None:
    return None


def _instances(rows: list[Row]) -> Any:
    return {"instances": rows}


def _tensors(rows: list[Row]) -> Any:
    return {
        "inputs": [
            {"name": name, "shape": [len(rows)], "datatype": "FP64", "data": [row.get(name) for row in rows]}
            for name in APPLICATION
        ]
    }


#: Rows of the champion's features, any of them missing, each value of any type an event may carry.
ROWS = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            name: st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=8), st.none())
            for name in APPLICATION
        },
    ),
    min_size=1,
    max_size=4,
)


@dataclass(frozen=True)
class Target:
    """A service, what it is given before it starts, and the request that answers 200 once it took it in."""

    create: Callable[[DriftloopSettings], FastAPI]
    seed: Callable[[DriftloopSettings, Bus], Awaitable[None]] = _nothing
    seeded: str = "/readyz"
    #: Path parameters naming what the service holds.
    known: dict[str, Any] = field(default_factory=dict)
    #: Bodies built from rows of features, by operation.
    bodies: dict[str, Body] = field(default_factory=dict)


TARGETS = {
    "ingestion": Target(lambda s: ingestion_app(IngestionSettings(**s.model_dump()))),
    "features": Target(
        lambda s: features_app(FeaturesSettings(**s.model_dump())),
        _seed_features,
        f"/v1/features/{ENTITY}",
        {"entity_id": ENTITY},
    ),
    "training": Target(lambda s: training_app(TrainingSettings(**s.model_dump())), known={"name": MODEL}),
    "registry": Target(
        lambda s: registry_app(RegistrySettings(**s.model_dump())),
        _seed_registry,
        f"/v1/models/{MODEL}/versions",
        {"name": MODEL, "version": 1, "alias": "champion"},
    ),
    "deployment": Target(
        lambda s: deployment_app(DeploymentSettings(**s.model_dump())),
        _seed_deployment,
        f"/v1/deployments/{MODEL}",
        {"name": MODEL},
        {"POST /v1/models/{name}/predict": _instances, "POST /v2/models/{name}/infer": _tensors},
    ),
    "monitoring": Target(
        lambda s: monitoring_app(MonitoringSettings(**s.model_dump())),
        _seed_monitoring,
        f"/v1/models/{MODEL}/metrics",
        {"name": MODEL},
    ),
}


@dataclass
class Findings:
    #: Cases sent, by operation; every operation of the document is here, from the first.
    cases: dict[str, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)


def _strategy(operation: Operation, auth: dict[str, str], target: Target) -> st.SearchStrategy[Case[Operation]]:
    """Conforming cases; breaking ones where there is anything to break; conforming ones naming what is there,
    with bodies of feature rows where the service scores them.

    The token is fixed in every case, so a breaking case breaks the request, not its credentials.
    """
    strategies = [operation.as_strategy(GenerationMode.POSITIVE, headers=auth)]
    if operation.path_parameters or operation.query or operation.body:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE, headers=auth))
    names = {p.name for p in operation.path_parameters}
    if aimed := {name: value for name, value in target.known.items() if name in names}:
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, headers=auth, path_parameters=aimed))
        if body := target.bodies.get(operation.label):
            strategies.append(_scoring(operation, auth, aimed, body))
    return st.one_of(strategies)


def _scoring(
    operation: Operation, auth: dict[str, str], aimed: dict[str, Any], body: Body
) -> st.SearchStrategy[Case[Operation]]:
    return ROWS.flatmap(
        lambda rows: operation.as_strategy(
            GenerationMode.POSITIVE, headers=auth, path_parameters=aimed, body=body(rows)
        )
    )


def _fuzz(url: str, token: str, target: Target) -> Findings:
    """Every operation's cases against the running service; runs in a thread, the service on the event loop."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    findings = Findings()
    session = requests.Session()
    auth = {"Authorization": f"Bearer {token}"}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()
        findings.cases[operation.label] = 0

        # Server errors are collected, not raised; only a service that stops answering raises, and shrinking
        # the case that met it would only take long.
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=_strategy(operation, auth, target))
        def send(case: Case[Operation]) -> None:
            response = case.call(base_url=url, session=session, timeout=60)
            findings.cases[case.operation.label] += 1
            if response.status_code >= 500:
                findings.server_errors.append(
                    f"{case.operation.label} answered {response.status_code} {response.text[:200]!r}\n"
                    f"    {case.as_curl_command(headers=auth, base_url=url)}"
                )

        send()
    return findings


def _own(settings: DriftloopSettings, name: str, **changes: Any) -> DriftloopSettings:
    """Settings of one service under test: its own topics, groups and state folder, so what one is sent
    never reaches another and each finds only what it was seeded with."""
    return settings.model_copy(
        update={"topic_prefix": f"{settings.topic_prefix}{name}.", "home": settings.home / name, **changes}
    )


async def _seeded(target: Target, settings: DriftloopSettings) -> None:
    await ensure_topics(settings)
    bus = Bus(settings, "test")
    await bus.start()
    try:
        await target.seed(settings, bus)
    finally:
        await bus.stop()


async def _ready(url: str, target: Target) -> None:
    async with httpx.AsyncClient(base_url=url) as client, asyncio.timeout(60):
        while {(await client.get(path)).status_code for path in (target.seeded, "/readyz")} != {200}:
            await asyncio.sleep(0.1)


Runs = dict[str, tuple[Target, DriftloopSettings]]


def _on_postgres(settings: DriftloopSettings, postgres_db_url: str, service: str) -> tuple[Target, DriftloopSettings]:
    return TARGETS[service], _own(settings, f"{service}-pg", database_url=postgres_db_url)


@contextlib.asynccontextmanager
async def _serving(runs: Runs) -> AsyncIterator[dict[str, str]]:
    """Every service seeded, started and ready, by name, with its base URL. Started together, they wait for
    their consumer groups at the same time."""
    await asyncio.gather(*(_seeded(target, own) for target, own in runs.values()))
    async with contextlib.AsyncExitStack() as stack:
        urls = {
            name: await stack.enter_async_context(serving(target.create(own))) for name, (target, own) in runs.items()
        }
        await asyncio.gather(*(_ready(urls[name], target) for name, (target, _) in runs.items()))
        yield urls


# schemathesis draws from Python's global random inside its strategies, which Hypothesis warns about; not ours.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_no_generated_request_gets_a_server_error(settings: DriftloopSettings, postgres_db_url: str) -> None:
    runs = {service: (target, _own(settings, service)) for service, target in TARGETS.items()}
    for service in ("training", "registry"):
        runs[f"{service} on PostgreSQL"] = _on_postgres(settings, postgres_db_url, service)
    findings: dict[str, Findings] = {}
    async with _serving(runs) as urls:
        for name, (target, own) in runs.items():
            token = await asyncio.to_thread(issue_token, own, Role.admin)
            findings[name] = await asyncio.to_thread(_fuzz, urls[name], token, target)
        async with httpx.AsyncClient() as client:
            ready = {name: (await client.get(f"{url}/readyz")).status_code for name, url in urls.items()}
    assert {name: found.server_errors for name, found in findings.items() if found.server_errors} == {}
    unreached = {name: [op for op, sent in found.cases.items() if not sent] for name, found in findings.items()}
    assert {name: ops for name, ops in unreached.items() if ops} == {}, "operations no case reached"
    assert ready == dict.fromkeys(runs, 200), "every service is still ready"


def _where(response: httpx.Response) -> list[tuple[object, ...]]:
    assert response.status_code == 422, response.text
    return [tuple(error["loc"]) for error in response.json()["detail"]]


async def test_the_inputs_that_were_server_errors_answer_422_naming_the_field(
    settings: DriftloopSettings, postgres_db_url: str
) -> None:
    """What the fuzzing met before the fixes, each once, with the answer it gets now."""
    runs = {
        "training": (TARGETS["training"], _own(settings, "training")),
        "registry": (TARGETS["registry"], _own(settings, "registry")),
        "registry on PostgreSQL": _on_postgres(settings, postgres_db_url, "registry"),
        "deployment": (TARGETS["deployment"], _own(settings, "deployment")),
    }
    huge = 2**70
    row = dict(APPLICATION)
    async with _serving(runs) as urls:
        tokens = {name: await asyncio.to_thread(issue_token, own, Role.admin) for name, (_, own) in runs.items()}

        def client(name: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=urls[name], headers={"Authorization": f"Bearer {tokens[name]}"})

        async with client("training") as training, client("registry") as registry:
            # Unbounded, each reached SQLite, which cannot bind a 2**70.
            assert _where(await training.get("/v1/runs", params={"limit": huge})) == [("query", "limit")]
            approve = await registry.post(f"/v1/models/{MODEL}/versions/{huge}/approve", json={"reason": "ok"})
            assert _where(approve) == [("path", "version")]
            alias = await registry.put(f"/v1/models/{MODEL}/aliases/best", json={"version": huge})
            assert _where(alias) == [("body", "version")]
        async with client("registry on PostgreSQL") as registry:
            # PostgreSQL refuses a negative LIMIT and cannot store a NUL.
            assert _where(await registry.get("/v1/audit", params={"limit": -1})) == [("query", "limit")]
            assert _where(await registry.get("/v1/audit", params={"model": "m\x00"})) == [("query", "model")]
            assert _where(await registry.get("/v1/models/m%00/versions")) == [("path", "name")]
            mlflow = await registry.get("/api/2.0/mlflow/registered-models/get", params={"name": "\x00"})
            assert _where(mlflow) == [("query", "name")]
            pin = await registry.post(f"/v1/models/{MODEL}/pin", json={"reason": "\x00"})
            assert _where(pin) == [("body", "reason")]
            # FastAPI's own 422 echoed the Infinity it was sent, which JSON cannot hold.
            infinite = await registry.post(f"/v1/models/{MODEL}/pin", content=b'{"reason": Infinity}', headers=JSON)
            assert _where(infinite) == [("body", "reason")] and infinite.json()["detail"][0]["input"] == "Infinity"
            assert (await registry.get("/v1/audit", params={"limit": 10_000})).status_code == 200
        async with client("deployment") as deployment:
            predict = f"/v1/models/{MODEL}/predict"
            missing = await deployment.post(predict, json={"instances": [{"age": 40}]})
            assert _where(missing) == [("body", "instances", 0, name) for name in APPLICATION if name != "age"]
            assert "cannot do without it (Input X contains NaN.)" in missing.json()["detail"][0]["msg"]
            for number in (b"Infinity", b"1e400", b"1" + b"0" * 400):
                body = b'{"instances": [{"age": ' + number + b"}]}"
                assert _where(await deployment.post(predict, content=body, headers=JSON)) == [
                    ("body", "instances", 0, "age")
                ]
            tensor = {"name": "loan", "shape": [1], "datatype": "FP64", "data": [1.0]}
            infer = f"/v2/models/{MODEL}/infer"
            empty = await deployment.post(infer, json={"inputs": [tensor, {**tensor, "data": []}]})
            assert _where(empty) == [("body", "inputs", 1, "data")]
            twice = await deployment.post(infer, json={"inputs": [tensor, {**tensor, "data": [1.0, 2.0]}]})
            assert _where(twice) == [("body", "inputs")]
            assert "more than one for ['loan']" in twice.json()["detail"][0]["msg"]
            scored = await deployment.post(predict, json={"instances": [row]})
            assert scored.status_code == 200 and scored.json()["model_version"] == 1
