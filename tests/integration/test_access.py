"""Who may call what, found by walking every service's OpenAPI document rather than by a list kept by hand."""

from __future__ import annotations

import importlib

import httpx
import pytest
from fastapi import FastAPI

from driftloop.auth import Role
from driftloop.cli.stack import SERVICES
from driftloop.settings import DriftloopSettings, ServiceSettings
from tests.support import issue_token

OPEN = {"/healthz", "/readyz", "/metrics"}
MUTATING = {"post", "put", "patch", "delete"}


def _app(service: str, settings: DriftloopSettings, read_access: str) -> FastAPI:
    module = importlib.import_module(f"driftloop.services.{service}.main")
    values = {**settings.model_dump(), "service": service, "read_access": read_access}
    app: FastAPI = module.create_app(_settings_class(service)(**values))
    return app


def _settings_class(service: str) -> type[ServiceSettings]:
    """The settings class the service's own module defines (it may import a base, such as StreamSettings)."""
    settings_module = importlib.import_module(f"driftloop.services.{service}.settings")
    return next(
        value
        for value in vars(settings_module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value.__module__ == settings_module.__name__
    )


def _operations(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, concrete path, least role) of every operation; path parameters get a plausible value."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            if path in OPEN:
                assert "security" not in operation, path
                continue
            requirements = operation.get("security")
            assert requirements and len(requirements) == 1, f"{method} {path} declares no single role"
            (scopes,) = requirements[0].values()
            concrete = path
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    value = "1" if parameter["schema"].get("type") == "integer" else "m"
                    concrete = concrete.replace("{" + parameter["name"] + "}", value)
            found.append((method, concrete, Role(scopes[0])))
    return found


@pytest.mark.parametrize("service", SERVICES)
async def test_every_mutating_endpoint_wants_a_token_and_a_big_enough_role(
    service: str, settings: DriftloopSettings
) -> None:
    viewer = issue_token(settings, Role.viewer, "vera")
    app = _app(service, settings, read_access="viewer")
    operations = _operations(app)
    # The apps are not started: a request that got past the check would fail, so each must stop at it.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for method, path, role in operations:
            anonymous = await client.request(method, path)
            assert anonymous.status_code == 401, (method, path)
            assert anonymous.headers["www-authenticate"] == "Bearer"
            forged = await client.request(method, path, headers={"Authorization": f"Bearer {viewer}x"})
            assert forged.status_code == 401, (method, path)
            if method in MUTATING and role is not Role.viewer:
                refused = await client.request(method, path, headers={"Authorization": f"Bearer {viewer}"})
                assert refused.status_code == 403, (method, path)
                assert f"this needs {role}" in refused.json()["detail"]
    mutating = {(method, path): role for method, path, role in operations if method in MUTATING}
    expected = {
        "ingestion": {("post", "/v1/events"): Role.producer, ("post", "/v1/labels"): Role.producer},
        "training": {("post", "/v1/models/m/retrain"): Role.operator},
        "registry": {
            ("post", "/v1/models/m/versions/1/promote"): Role.operator,
            ("post", "/v1/models/m/rollback"): Role.operator,
            ("post", "/v1/models/m/pin"): Role.operator,
            ("post", "/v1/models/m/unpin"): Role.operator,
            ("post", "/v1/models/m/versions/1/approve"): Role.approver,
            ("post", "/v1/models/m/versions/1/reject"): Role.approver,
            ("put", "/v1/models/m/aliases/m"): Role.operator,
            ("delete", "/v1/models/m/aliases/m"): Role.operator,
        },
        # Scoring changes nothing an operator governs: it is a read, open unless reads need a token.
        "deployment": {("post", "/v1/models/m/predict"): Role.viewer, ("post", "/v2/models/m/infer"): Role.viewer},
    }
    assert mutating == expected.get(service, {})


async def test_a_producer_token_writes_data_and_nothing_else(settings: DriftloopSettings) -> None:
    producer = issue_token(settings, Role.producer, "pipeline")
    operator = issue_token(settings, Role.operator, "olga")
    training = _app("training", settings, read_access="viewer")
    ingestion = _app("ingestion", settings, read_access="open")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=training), base_url="http://test") as client:
        retrain = await client.post("/v1/models/m/retrain", headers={"Authorization": f"Bearer {producer}"})
        runs = await client.get("/v1/runs", headers={"Authorization": f"Bearer {producer}"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingestion), base_url="http://test") as client:
        events = await client.post("/v1/events", json=[], headers={"Authorization": f"Bearer {operator}"})
    assert (retrain.status_code, runs.status_code, events.status_code) == (403, 403, 403)
