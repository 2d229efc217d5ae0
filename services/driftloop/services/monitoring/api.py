"""What monitoring knows about a model: its rolling accuracy, its estimated accuracy, its drift state and history.

Answers come from the ``tracks`` and ``watches`` tables, so a replica answers
for the models whose partitions it holds; the others answer 404 for them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel

from driftloop.contracts import DriftDetected
from driftloop.http import READ
from driftloop.services.monitoring.datawatch import DataWatch
from driftloop.services.monitoring.domain import ModelMonitor, ModelTrack
from driftloop.services.monitoring.estimation import AccuracyEstimate
from driftloop.services.monitoring.history import merge_accuracy
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
    #: Accuracy estimated from the served probabilities (CBPE), for the champion only, once its window is full.
    estimated_accuracy: float | None = None
    #: The estimate's interval at ``drift.estimation.level``: [lower, upper].
    estimated_interval: tuple[float, float] | None = None


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
    #: Concept drifts of the track and data drifts of the data watch, oldest first.
    events: list[DriftDetected]


class AccuracyPointView(BaseModel):
    """The realized rolling accuracy, the estimate with its interval, or both, as monitoring saw them at ``at``."""

    at: datetime
    model_version: int
    realized: float | None
    estimated: float | None
    estimated_interval: tuple[float, float] | None


class ColumnResultView(BaseModel):
    feature: str
    statistic: str
    value: float
    p_adjusted: float
    psi: float
    drifted: bool


class DriftCheckView(BaseModel):
    """One data-drift check: every column compared with the version's reference."""

    at: datetime
    model_version: int
    observations: int
    columns: list[ColumnResultView]


class ModelHistory(BaseModel):
    model_name: str
    accuracy: list[AccuracyPointView]
    #: Drift events of both kinds, oldest first: the markers on the accuracy chart.
    drifts: list[DriftDetected]
    checks: list[DriftCheckView]


def _track(streams: MonitorStreams, name: str) -> tuple[ModelTrack, ModelMonitor]:
    track = streams.track(name)
    if track is None or track.current is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no labelled predictions of {name!r} seen yet")
    return track, track.current


def _figures(monitor: ModelMonitor, estimated: tuple[int, AccuracyEstimate] | None) -> VersionMetrics:
    figures = VersionMetrics(
        model_version=monitor.version,
        observations=monitor.observations,
        accuracy=monitor.accuracy,
        rolling_accuracy=monitor.rolling_accuracy,
        rolling_window=monitor.window,
    )
    return _with_estimate(figures, estimated)


def _with_estimate(figures: VersionMetrics, estimated: tuple[int, AccuracyEstimate] | None) -> VersionMetrics:
    if estimated is None or estimated[0] != figures.model_version:
        return figures
    return figures.model_copy(update=_estimate_fields(estimated[1]))


def _estimate_fields(estimate: AccuracyEstimate) -> dict[str, Any]:
    return {"estimated_accuracy": estimate.accuracy, "estimated_interval": (estimate.lower, estimate.upper)}


def _estimated(streams: MonitorStreams, name: str) -> tuple[int, AccuracyEstimate] | None:
    watch = streams.watch(name)
    if watch is None or watch.version is None or (estimate := watch.estimate()) is None:
        return None
    return watch.version, estimate


def _when(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def _drifts(track: ModelTrack | None, watch: DataWatch | None) -> list[DriftDetected]:
    kept = (track.drifts if track is not None else []) + (watch.history.drifts if watch is not None else [])
    return sorted((DriftDetected.model_validate(d) for d in kept), key=lambda d: d.occurred_at)


@router.get("/models/{name}/metrics")
async def metrics(name: str, streams: StreamsDep) -> ModelMetrics:
    """The latest labelled version's figures at the top; the estimate is the champion's, which labels may
    not have reached yet: then the top level is the champion with its estimate alone."""
    estimated = _estimated(streams, name)
    track = streams.track(name)
    if track is None or track.current is None:
        if estimated is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no predictions of {name!r} seen yet")
        empty = VersionMetrics(
            model_version=estimated[0],
            observations=0,
            accuracy=None,
            rolling_accuracy=None,
            rolling_window=streams.rolling_window,
        )
        return ModelMetrics(model_name=name, **_with_estimate(empty, estimated).model_dump(), versions=[])
    versions = [_figures(m, estimated) for _, m in sorted(track.monitors.items())]
    top = _figures(track.current, None)
    if estimated is not None:
        top = top.model_copy(update=_estimate_fields(estimated[1]))
    return ModelMetrics(model_name=name, **top.model_dump(), versions=versions)


@router.get("/models/{name}/drift")
async def drift(name: str, streams: StreamsDep) -> DriftState:
    track, current = _track(streams, name)
    evidence = current.drift
    return DriftState(
        model_name=name,
        model_version=current.version,
        detector=current.detector_name,
        drift_detected=evidence is not None,
        detected_at=_when(evidence.detected_at if evidence else None),
        change_point_time=_when(evidence.change_point_time if evidence else None),
        accuracy_before=evidence.accuracy_before if evidence else None,
        accuracy_after=evidence.accuracy_after if evidence else None,
        events=_drifts(track, streams.watch(name)),
    )


@router.get("/models/{name}/history")
async def history(name: str, streams: StreamsDep) -> ModelHistory:
    """What the dashboard draws: accuracy over time, the drifts raised and every data-drift check."""
    track, watch = streams.track(name), streams.watch(name)
    if track is None and watch is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no predictions of {name!r} seen yet")
    realized = track.realized.points if track is not None else []
    estimated = watch.history.estimates if watch is not None else []
    accuracy = [
        AccuracyPointView(
            at=datetime.fromtimestamp(p.at, UTC),
            model_version=p.version,
            realized=p.realized,
            estimated=p.estimated,
            estimated_interval=(p.lower, p.upper) if p.lower is not None and p.upper is not None else None,
        )
        for p in merge_accuracy(realized, estimated)
    ]
    checks = [
        DriftCheckView(
            at=datetime.fromtimestamp(c.at, UTC),
            model_version=c.version,
            observations=c.observations,
            columns=[ColumnResultView.model_validate(r, from_attributes=True) for r in c.columns],
        )
        for c in (watch.history.checks if watch is not None else [])
    ]
    return ModelHistory(model_name=name, accuracy=accuracy, drifts=_drifts(track, watch), checks=checks)
