"""What monitoring knows about a model: its rolling accuracy and its drift state."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel

from driftloop.contracts import DriftDetected
from driftloop.services.monitoring.domain import ModelMonitor
from driftloop.services.monitoring.streams import MonitorStreams

router = APIRouter(prefix="/v1", tags=["monitoring"])


def get_streams(request: Request) -> MonitorStreams:
    streams: MonitorStreams = request.app.state.streams
    return streams


StreamsDep = Annotated[MonitorStreams, Depends(get_streams)]


class ModelMetrics(BaseModel):
    model_name: str
    model_version: int
    observations: int
    accuracy: float | None
    rolling_accuracy: float | None
    rolling_window: int


class DriftState(BaseModel):
    model_name: str
    model_version: int
    detector: str
    drift_detected: bool
    detected_at: datetime | None
    change_point_time: datetime | None
    accuracy_before: float | None
    accuracy_after: float | None
    events: list[DriftDetected]


def _monitor(streams: MonitorStreams, name: str) -> ModelMonitor:
    monitor = streams.monitors.get(name)
    if monitor is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no labelled predictions of {name!r} seen yet")
    return monitor


@router.get("/models/{name}/metrics")
async def metrics(name: str, streams: StreamsDep) -> ModelMetrics:
    monitor = _monitor(streams, name)
    return ModelMetrics(
        model_name=name,
        model_version=monitor.version,
        observations=monitor.observations,
        accuracy=monitor.accuracy,
        rolling_accuracy=monitor.rolling_accuracy,
        rolling_window=monitor.window,
    )


@router.get("/models/{name}/drift")
async def drift(name: str, streams: StreamsDep) -> DriftState:
    monitor = _monitor(streams, name)
    evidence = monitor.drift
    return DriftState(
        model_name=name,
        model_version=monitor.version,
        detector=f"adwin(delta={monitor.delta})",
        drift_detected=evidence is not None,
        detected_at=evidence.detected_at if evidence else None,
        change_point_time=evidence.change_point_time if evidence else None,
        accuracy_before=evidence.accuracy_before if evidence else None,
        accuracy_after=evidence.accuracy_after if evidence else None,
        events=streams.drifts.get(name, []),
    )
