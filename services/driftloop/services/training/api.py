"""Runs as ops tooling sees them, and the manual retrain request (it travels over Kafka like any other)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel

from driftloop.auth import Identity, Role
from driftloop.contracts import RetrainRequested
from driftloop.http import READ, Limit, require, stored_parameters
from driftloop.runtime import Runtime
from driftloop.services.training.settings import TrainingSettings
from driftloop.services.training.store import RunStore

router = APIRouter(prefix="/v1", tags=["training"], dependencies=[Depends(stored_parameters)])


def get_runtime(request: Request) -> Runtime[TrainingSettings]:
    runtime: Runtime[TrainingSettings] = request.app.state.runtime
    return runtime


def get_runs(request: Request) -> RunStore:
    runs: RunStore = request.app.state.runs
    return runs


RuntimeDep = Annotated[Runtime[TrainingSettings], Depends(get_runtime)]
RunsDep = Annotated[RunStore, Depends(get_runs)]


class RetrainBody(BaseModel):
    """Who asks is the caller's token, not anything the body says."""

    since: datetime | None = None


class RetrainAccepted(BaseModel):
    request_id: str
    model_name: str


class RunView(BaseModel):
    run_id: str
    model_name: str
    status: str
    trigger: str
    requested_by: str
    correlation_id: str
    since: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    metrics: dict[str, float] | None
    data_window: dict[str, Any] | None
    artifact_uri: str | None
    error: str | None
    #: A drift run admitted within the cooldown of the one before waits until then.
    not_before: datetime | None = None


@router.post("/models/{name}/retrain", status_code=status.HTTP_202_ACCEPTED)
async def retrain(
    who: Annotated[Identity, require(Role.operator)], name: str, runtime: RuntimeDep, body: RetrainBody | None = None
) -> RetrainAccepted:
    if name not in {m.name for m in runtime.config.models}:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {name!r} in the configuration")
    body = body or RetrainBody()
    request = RetrainRequested(model_name=name, reason="manual", requested_by=who.name, since=body.since)
    await runtime.bus.publish(request, key=name)
    return RetrainAccepted(request_id=request.event_id, model_name=name)


@router.get("/runs", dependencies=[READ])
async def list_runs(runs: RunsDep, model: str | None = None, limit: Limit = 100) -> list[RunView]:
    return [RunView.model_validate(r, from_attributes=True) for r in runs.list(model, limit)]


@router.get("/runs/{run_id}", dependencies=[READ])
async def get_run(run_id: str, runs: RunsDep) -> RunView:
    run = runs.get(run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
    return RunView.model_validate(run, from_attributes=True)
