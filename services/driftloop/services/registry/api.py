"""The registry's REST face: read models and versions, promote and roll back, read the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel

from driftloop.db import OutboxRelay
from driftloop.services.registry.store import Conflict, ModelVersion, NotFound, Registry

router = APIRouter(prefix="/v1", tags=["registry"])


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def get_relay(request: Request) -> OutboxRelay:
    relay: OutboxRelay = request.app.state.relay
    return relay


RegistryDep = Annotated[Registry, Depends(get_registry)]
RelayDep = Annotated[OutboxRelay, Depends(get_relay)]


class ModelSummary(BaseModel):
    name: str
    champion: int | None
    latest_version: int
    versions: int


class VersionView(BaseModel):
    model_name: str
    version: int
    status: str
    aliases: list[str]
    run_id: str
    artifact_uri: str
    artifact_sha256: str | None
    evaluated_artifact_uri: str | None = None
    metrics: dict[str, float]
    data_window: dict[str, Any]
    parent_version: int | None
    correlation_id: str
    created_at: datetime
    gate: dict[str, Any] | None
    reference_uri: str | None = None


class AuditView(BaseModel):
    at: datetime
    actor: str
    action: str
    model_name: str
    version: int | None
    previous_version: int | None
    reason: str
    correlation_id: str | None
    decision: dict[str, Any] | None = None


class ChangeBody(BaseModel):
    reason: str = ""
    actor: str = "api"


def _view(row: ModelVersion, aliases: dict[str, int]) -> VersionView:
    names = [alias for alias, version in aliases.items() if version == row.version]
    return VersionView.model_validate({**row.model_dump(), "aliases": names})


def _versions_or_404(registry: Registry, name: str) -> list[ModelVersion]:
    versions = registry.versions(name)
    if not versions:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {name!r}")
    return versions


@router.get("/models")
async def list_models(registry: RegistryDep) -> list[ModelSummary]:
    out = []
    for name in registry.models():
        versions = registry.versions(name)
        out.append(
            ModelSummary(
                name=name,
                champion=registry.aliases(name).get("champion"),
                latest_version=versions[-1].version,
                versions=len(versions),
            )
        )
    return out


@router.get("/models/{name}/versions")
async def list_versions(name: str, registry: RegistryDep) -> list[VersionView]:
    aliases = registry.aliases(name)
    return [_view(v, aliases) for v in _versions_or_404(registry, name)]


@router.get("/models/{name}/aliases/{alias}")
async def get_alias(name: str, alias: str, registry: RegistryDep) -> VersionView:
    aliases = registry.aliases(name)
    if alias not in aliases:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name!r} has no {alias!r} alias")
    version = next(v for v in _versions_or_404(registry, name) if v.version == aliases[alias])
    return _view(version, aliases)


@contextmanager
def _http_errors() -> Iterator[None]:
    """Registry refusals as HTTP: an unknown model or version is 404, an impossible change 409."""
    try:
        yield
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.post("/models/{name}/versions/{version}/promote")
async def promote(
    name: str, version: int, registry: RegistryDep, relay: RelayDep, body: ChangeBody | None = None
) -> VersionView:
    """Make a version champion by hand; the same path, audit row and event as a gate promotion."""
    body = body or ChangeBody()
    with _http_errors(), registry.session() as s:
        row = registry.version(s, name, version)
        reason = body.reason or "manual promotion"
        registry.promote(
            s, row, actor=body.actor, reason=reason, causation_id=None, correlation_id=row.correlation_id, decision=None
        )
        s.commit()
    relay.wakeup.set()
    return await get_alias(name, "champion", registry)


@router.post("/models/{name}/rollback")
async def rollback(name: str, registry: RegistryDep, relay: RelayDep, body: ChangeBody | None = None) -> VersionView:
    body = body or ChangeBody()
    with _http_errors(), registry.session() as s:
        registry.rollback(s, name, actor=body.actor, reason=body.reason or "manual rollback")
        s.commit()
    relay.wakeup.set()
    return await get_alias(name, "champion", registry)


@router.get("/audit")
async def audit(registry: RegistryDep, model: str | None = None, limit: int = 200) -> list[AuditView]:
    return [AuditView.model_validate(e, from_attributes=True) for e in registry.audit(model, limit)]
