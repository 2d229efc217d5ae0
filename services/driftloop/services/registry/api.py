"""The registry's REST face: read models and versions, promote, roll back and pin, approve or reject the versions
waiting for a person, set operators' aliases, read the audit log.

Every change is made as the caller's token: its name and role are the audit's actor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, Field

from driftloop.auth import Identity, Role
from driftloop.config import PromotionPolicy, RolloutPolicy
from driftloop.db import OutboxRelay
from driftloop.http import READ, Limit, StoredText, require, stored_parameters
from driftloop.services.registry.domain import ALIAS_PATTERN
from driftloop.services.registry.store import Conflict, ModelVersion, NotFound, Registry

router = APIRouter(prefix="/v1", tags=["registry"], dependencies=[Depends(stored_parameters)])


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def get_relay(request: Request) -> OutboxRelay:
    relay: OutboxRelay = request.app.state.relay
    return relay


def get_policy(request: Request) -> PromotionPolicy:
    policy: PromotionPolicy = request.app.state.promotion
    return policy


def get_rollout_for(request: Request) -> Callable[[str], RolloutPolicy]:
    rollout_for: Callable[[str], RolloutPolicy] = request.app.state.rollout_for
    return rollout_for


RegistryDep = Annotated[Registry, Depends(get_registry)]
RolloutForDep = Annotated[Callable[[str], RolloutPolicy], Depends(get_rollout_for)]
RelayDep = Annotated[OutboxRelay, Depends(get_relay)]
PolicyDep = Annotated[PromotionPolicy, Depends(get_policy)]
#: First in every changing endpoint's signature: who calls is settled before anything is read.
Operator = Annotated[Identity, require(Role.operator)]
Approver = Annotated[Identity, require(Role.approver)]
AliasName = Annotated[str, Path(pattern=ALIAS_PATTERN)]
#: Versions are 32-bit integers in the database (PostgreSQL's INTEGER), so no larger number names one; bounded
#: here, a 2**70 is a 422 naming the field instead of a number SQLite cannot bind (a 500).
MAX_VERSION = 2**31 - 1
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION)]


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
    semver: str | None = None
    feature_names: list[str] | None = None


class AuditView(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_role: str | None
    action: str
    model_name: str
    version: int | None
    previous_version: int | None
    reason: str
    correlation_id: str | None
    decision: dict[str, Any] | None = None
    row_hash: str | None


class ChangeBody(BaseModel):
    """Why; who is the caller's token, not anything the body says."""

    reason: StoredText = ""


class DecisionBody(BaseModel):
    """An approval or rejection must say why: the reason is the audit's record of the person's judgement."""

    reason: StoredText = Field(min_length=1)


class AliasBody(BaseModel):
    version: int = Field(ge=1, le=MAX_VERSION)
    reason: StoredText = ""


class ApprovalView(BaseModel):
    model_name: str
    version: int
    semver: str | None
    correlation_id: str
    awaiting_since: datetime | None
    #: When the timeout acts on it; None without a timeout.
    due_at: datetime | None
    escalated_at: datetime | None
    gate: dict[str, Any] | None


class PinView(BaseModel):
    model_name: str
    version: int
    actor: str
    reason: str
    at: datetime


def _view(row: ModelVersion, aliases: dict[str, int]) -> VersionView:
    names = [alias for alias, version in aliases.items() if version == row.version]
    return VersionView.model_validate({**row.model_dump(), "aliases": names})


def _versions_or_404(registry: Registry, name: str) -> list[ModelVersion]:
    versions = registry.versions(name)
    if not versions:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {name!r}")
    return versions


@router.get("/models", dependencies=[READ])
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


@router.get("/models/{name}/versions", dependencies=[READ])
async def list_versions(name: str, registry: RegistryDep) -> list[VersionView]:
    aliases = registry.aliases(name)
    return [_view(v, aliases) for v in _versions_or_404(registry, name)]


@router.get("/models/{name}/aliases/{alias}", dependencies=[READ])
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
    who: Operator,
    name: str,
    version: VersionNumber,
    registry: RegistryDep,
    relay: RelayDep,
    body: ChangeBody | None = None,
) -> VersionView:
    """Make a version champion by hand; the same path, audit row and event as a gate promotion."""
    body = body or ChangeBody()
    with _http_errors(), registry.session() as s:
        row = registry.version(s, name, version)
        reason = body.reason or "manual promotion"
        registry.promote(
            s,
            row,
            actor=who.name,
            actor_role=who.role,
            reason=reason,
            causation_id=None,
            correlation_id=row.correlation_id,
            decision=None,
        )
        s.commit()
    relay.wakeup.set()
    return await get_alias(name, "champion", registry)


@router.post("/models/{name}/rollback")
async def rollback(
    who: Operator, name: str, registry: RegistryDep, relay: RelayDep, body: ChangeBody | None = None
) -> VersionView:
    """Back to the previous champion in the version history; again, one more step back."""
    body = body or ChangeBody()
    with _http_errors(), registry.session() as s:
        registry.rollback(s, name, actor=who.name, actor_role=who.role, reason=body.reason or "manual rollback")
        s.commit()
    relay.wakeup.set()
    return await get_alias(name, "champion", registry)


@router.post("/models/{name}/pin")
async def pin(who: Operator, name: str, registry: RegistryDep, body: ChangeBody | None = None) -> PinView:
    """Keep the current champion: the gate's promotions are refused, and people must unpin to move it."""
    body = body or ChangeBody()
    with _http_errors(), registry.session() as s:
        row = registry.pin(s, name, actor=who.name, actor_role=who.role, reason=body.reason)
        s.commit()
    return PinView.model_validate(row, from_attributes=True)


@router.post("/models/{name}/unpin", status_code=status.HTTP_204_NO_CONTENT)
async def unpin(who: Operator, name: str, registry: RegistryDep, body: ChangeBody | None = None) -> None:
    body = body or ChangeBody()
    with _http_errors(), registry.session() as s:
        registry.unpin(s, name, actor=who.name, actor_role=who.role, reason=body.reason)
        s.commit()


@router.get("/models/{name}/pin", dependencies=[READ])
async def get_pin(name: str, registry: RegistryDep) -> PinView:
    with registry.session() as s:
        row = registry.pinned(s, name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name!r} is not pinned")
    return PinView.model_validate(row, from_attributes=True)


@router.get("/audit", dependencies=[READ])
async def audit(registry: RegistryDep, model: str | None = None, limit: Limit = 200) -> list[AuditView]:
    return [AuditView.model_validate(e, from_attributes=True) for e in registry.audit(model, limit)]


@router.get("/approvals", dependencies=[READ])
async def approvals(registry: RegistryDep, policy: PolicyDep, model: str | None = None) -> list[ApprovalView]:
    """Versions that passed the gate and wait for an approver, oldest first."""
    timeout: timedelta | None = policy.approval_timeout
    return [
        ApprovalView(
            model_name=row.model_name,
            version=row.version,
            semver=row.semver,
            correlation_id=row.correlation_id,
            awaiting_since=row.awaiting_since,
            due_at=row.awaiting_since + timeout if row.awaiting_since and timeout else None,
            escalated_at=row.escalated_at,
            gate=row.gate,
        )
        for row in registry.pending(model)
    ]


@router.post("/models/{name}/versions/{version}/approve")
async def approve(
    who: Approver,
    name: str,
    version: VersionNumber,
    body: DecisionBody,
    registry: RegistryDep,
    relay: RelayDep,
    rollout_for: RolloutForDep,
) -> VersionView:
    """Roll out a waiting version with the gate's decision, as the model's rollout says; the approver is the
    audit's actor. The answer is the approved version: champion at once, or challenger while it rolls out."""
    with _http_errors(), registry.session() as s:
        row = registry.approve(
            s, name, version, rollout_for(name).strategy, actor=who.name, actor_role=who.role, reason=body.reason
        )
        s.commit()
    relay.wakeup.set()
    return _view(row, registry.aliases(name))


@router.post("/models/{name}/versions/{version}/reject")
async def reject(
    who: Approver, name: str, version: VersionNumber, body: DecisionBody, registry: RegistryDep, relay: RelayDep
) -> VersionView:
    """Refuse a waiting version; the loop reads it as a rejected challenger, its drift still unresolved."""
    with _http_errors(), registry.session() as s:
        registry.refuse(s, name, version, actor=who.name, actor_role=who.role, reason=body.reason)
        row = registry.version(s, name, version)
        s.commit()
    relay.wakeup.set()
    return _view(row, registry.aliases(name))


@router.get("/models/{name}/aliases", dependencies=[READ])
async def list_aliases(name: str, registry: RegistryDep) -> dict[str, int]:
    """Every alias of the model: ``champion`` and ``challenger`` moved by the loop, the rest by operators."""
    _versions_or_404(registry, name)
    return registry.aliases(name)


@router.put("/models/{name}/aliases/{alias}")
async def set_alias(who: Operator, name: str, alias: AliasName, body: AliasBody, registry: RegistryDep) -> VersionView:
    """Point an operator's alias at a version; it names the version and never changes what is served."""
    with _http_errors(), registry.session() as s:
        registry.set_alias(s, name, alias, body.version, actor=who.name, actor_role=who.role, reason=body.reason)
        s.commit()
    return await get_alias(name, alias, registry)


@router.delete("/models/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_alias(
    who: Operator, name: str, alias: AliasName, registry: RegistryDep, body: ChangeBody | None = None
) -> None:
    body = body or ChangeBody()
    with _http_errors(), registry.session() as s:
        registry.delete_alias(s, name, alias, actor=who.name, actor_role=who.role, reason=body.reason)
        s.commit()
