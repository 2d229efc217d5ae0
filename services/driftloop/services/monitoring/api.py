"""What monitoring knows about a model: its rolling accuracy and its drift state, per version.

Answers come from the ``tracks`` table, so a replica answers for the models
whose outcome partition it holds; the others answer 404 for them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel

from driftloop.contracts import DriftDetected
from driftloop.http import READ
from driftloop.services.monitoring.domain import ModelMonitor, ModelTrack
from driftloop.services.monitoring.streams import MonitorStreams

router = APIRouter(prefix="/v1", tags=["monitoring"], dependencies=[READ])


def get_streams(request: Request) -> MonitorStreams:
    streams: MonitorStreams = request.app.state.streams
    return streams


StreamsDep = Annotated[MonitorStreams, Depends(get_streams)]


class VersionMetrics(BaseModel):
    model_version: int
    observations: int
    accuracy: float | None
    rolling_accuracy: float | None
    rolling_window: int


class ModelMetrics(VersionMetrics):
    """The current version's figures at the top level, every kept version's in ``versions``."""

    model_name: str
    versions: list[VersionMetrics]


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


def _track(streams: MonitorStreams, name: str) -> tuple[ModelTrack, ModelMonitor]:
    track = streams.track(name)
    if track is None or track.current is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no labelled predictions of {name!r} seen yet")
    return track, track.current


def _figures(monitor: ModelMonitor) -> VersionMetrics:
    return VersionMetrics(
        model_version=monitor.version,
        observations=monitor.observations,
        accuracy=monitor.accuracy,
        rolling_accuracy=monitor.rolling_accuracy,
        rolling_window=monitor.window,
    )


def _when(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


@router.get("/models/{name}/metrics")
async def metrics(name: str, streams: StreamsDep) -> ModelMetrics:
    track, current = _track(streams, name)
    return ModelMetrics(
        model_name=name,
        **_figures(current).model_dump(),
        versions=[_figures(m) for _, m in sorted(track.monitors.items())],
    )


@router.get("/models/{name}/drift")
async def drift(name: str, streams: StreamsDep) -> DriftState:
    track, current = _track(streams, name)
    evidence = current.drift
    return DriftState(
        model_name=name,
        model_version=current.version,
        detector=f"adwin(delta={current.delta})",
        drift_detected=evidence is not None,
        detected_at=_when(evidence.detected_at if evidence else None),
        change_point_time=_when(evidence.change_point_time if evidence else None),
        accuracy_before=evidence.accuracy_before if evidence else None,
        accuracy_after=evidence.accuracy_after if evidence else None,
        events=[DriftDetected.model_validate(d) for d in track.drifts],
    )
