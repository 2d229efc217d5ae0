"""Prediction over REST (driftloop's shape and the Open Inference Protocol v2) and the deployment status."""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from driftloop.bus import Bus, Outgoing
from driftloop.contracts import Prediction, new_event_ids, utcnow
from driftloop.contracts.events import Features, FeatureValue, LabelValue
from driftloop.http import READ, JsonBody
from driftloop.logging import get_logger
from driftloop.services.deployment.domain import Served, ServingTable, Side
from driftloop.services.deployment.handlers import Rollouts
from driftloop.services.deployment.metrics import PREDICTIONS
from driftloop.services.deployment.serving import PublishFailed, Scores, Serving
from driftloop.services.deployment.settings import DeploymentSettings

router = APIRouter(tags=["deployment"])
log = get_logger(__name__)


# Dependencies are coroutines: FastAPI runs plain functions in its thread pool, a hop per request each.
async def get_table(request: Request) -> ServingTable:
    table: ServingTable = request.app.state.table
    return table


async def get_serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


async def get_settings(request: Request) -> DeploymentSettings:
    settings: DeploymentSettings = request.app.state.runtime.settings
    return settings


async def get_rollouts(request: Request) -> Rollouts:
    rollouts: Rollouts = request.app.state.rollouts
    return rollouts


TableDep = Annotated[ServingTable, Depends(get_table)]
RolloutsDep = Annotated[Rollouts, Depends(get_rollouts)]
ServingDep = Annotated[Serving, Depends(get_serving)]


#: The largest integer a float holds; past it a model cannot score the number.
_LARGEST = int(sys.float_info.max)
_NOT_FINITE = "not a finite number"


def _finite(value: FeatureValue) -> FeatureValue:
    """No model scores an infinite number, and a body can hold one: ``Infinity``, ``1e400`` or a 400-digit integer."""
    if _unscorable(value):
        raise ValueError(_NOT_FINITE)
    return value


def _unscorable(value: FeatureValue) -> bool:
    """Whether ``value`` is a number no model scores; ``x - x`` is NaN exactly for an infinity or a NaN."""
    if type(value) is float:
        return value - value != 0.0
    if type(value) is int:
        return not -_LARGEST <= value <= _LARGEST
    return False


#: A feature's value in a request: what an event may carry, and a number only when it is finite.
RequestValue = Annotated[FeatureValue, AfterValidator(_finite)]


class PredictRequest(BaseModel):
    #: Strict: a body's JSON types are the feature types as they are (no coercion to try), which validates in
    #: three quarters of the time of the lax union.
    model_config = ConfigDict(strict=True)

    #: How many is bounded for every request by ``max_batch`` (driftloop.http), before this model is built.
    instances: list[Features] = Field(min_length=1)

    def check_finite(self) -> None:
        """Refuse the numbers no model scores, as ``RequestValue`` does: in one pass over the rows after
        parsing, since a validator per value cost as much as the parse itself."""
        errors = [
            {"type": "value_error", "loc": ("body", "instances", index, name), "msg": f"Value error, {_NOT_FINITE}"}
            for index, row in enumerate(self.instances)
            for name, value in row.items()
            if _unscorable(value)
        ]
        if errors:
            raise RequestValidationError(errors)


class PredictResponse(BaseModel):
    model_version: int
    predictions: list[LabelValue]
    probabilities: list[float | None]
    prediction_ids: list[str]


class DeploymentView(BaseModel):
    model_name: str
    version: int
    artifact_uri: str
    artifact_sha256: str | None
    loaded_at: datetime
    #: ``direct`` when no rollout is under way; else the running rollout's strategy, challenger and share.
    strategy: str = "direct"
    challenger_version: int | None = None
    challenger_percent: float | None = None
    challenger_shadowed: bool | None = None
    instance: str


def _served(table: ServingTable, name: str) -> Served:
    served = table.get(name)
    if served is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no champion of {name!r} is loaded")
    return served


def _predictions(
    bus: Bus, side: Side, ids: list[str], scores: Scores, entity_id: str | None, own_ids: bool
) -> list[Outgoing]:
    """The model's own output for a request, encoded from one validated template (``Bus.encode_many``). A REST
    prediction starts its own story: its id is its correlation id, and it is keyed by it, as labels are."""
    labels, probabilities = scores
    event_ids = ids if own_ids else new_event_ids(len(ids))
    template = Prediction(
        event_id=event_ids[0],
        correlation_id=ids[0],
        occurred_at=utcnow(),
        source_event_id=ids[0],
        entity_id=entity_id,
        model_name=side.served.model_name,
        model_version=side.served.version,
        role=side.role,
        served=side.serves,
        channel="rest",
        prediction=labels[0],
        probability=probabilities[0],
    )
    changes = [
        {"event_id": event_id, "correlation_id": pid, "source_event_id": pid, "prediction": label, "probability": p}
        for pid, event_id, label, p in zip(ids, event_ids, labels, probabilities, strict=True)
    ]
    return bus.encode_many(template, changes, ids)


def _refused(served: Served, instances: list[Features], exc: ValueError) -> HTTPException:
    """The model refused the rows: a 422 naming each feature the rows lack, the usual cause (NaN, which a
    logistic regression cannot take); else one giving the model's own reason."""
    reason = str(exc).partition("\n")[0]
    model = f"version {served.version} of {served.model_name!r}"
    detail = [
        {"loc": ["body", "instances", index, name], "msg": f"missing, and {model} cannot do without it ({reason})"}
        for index, row in enumerate(instances)
        for name in served.artifact.feature_names
        if row.get(name) is None
    ] or [{"loc": ["body", "instances"], "msg": f"{model} cannot score these rows: {reason}"}]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [{**d, "type": "value_error"} for d in detail])


async def _score(serving: Serving, rollouts: Rollouts, side: Side, instances: list[Features]) -> Scores:
    started = time.perf_counter()
    try:
        scores = await serving.score(side.served, instances)
    except ValueError as exc:
        raise _refused(side.served, instances, exc) from exc
    if side.role == "challenger":
        await rollouts.check_latency(side.served.model_name, side.served.version, time.perf_counter() - started)
    return scores


async def _beside(
    serving: Serving, rollouts: Rollouts, side: Side, ids: list[str], instances: list[Features], entity_id: str | None
) -> None:
    """The side that scores beside the served one: its predictions join the same labels, the caller never sees
    them, and a failure here never reaches the caller."""
    try:
        scores = await _score(serving, rollouts, side, instances)
        records = _predictions(serving.log.bus, side, ids, scores, entity_id, own_ids=False)
        await serving.log.record(side.served.model_name, records)
    except Exception:
        log.exception("shadow scoring failed", model=side.served.model_name, version=side.served.version)


async def _predict(
    table: ServingTable,
    name: str,
    serving: Serving,
    rollouts: Rollouts,
    instances: list[Features],
    entity_id: str | None = None,
) -> PredictResponse:
    """Score with the side that serves this request; during a shadowed stage the other side scores after.

    A staged rollout routes the whole request by ``entity_id``, or by its
    first prediction id when the caller gives none (a random split).
    """
    ids = new_event_ids(len(instances))
    sides = table.sides(name, entity_id or ids[0])
    if not sides:
        _served(table, name)
    first = sides[0]
    scores = await _score(serving, rollouts, first, instances)
    try:
        await serving.log.record(name, _predictions(serving.log.bus, first, ids, scores, entity_id, own_ids=True))
    except PublishFailed as exc:
        PREDICTIONS.labels(name, "rest", "unpublished").inc(len(ids))
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"predictions not recorded: {exc}") from exc
    for side in sides[1:]:
        serving.spawn(_beside(serving, rollouts, side, ids, instances, entity_id))
    PREDICTIONS.labels(name, "rest", "ok").inc(len(ids))
    labels, probabilities = scores
    return PredictResponse(
        model_version=first.served.version, predictions=labels, probabilities=probabilities, prediction_ids=ids
    )


_PREDICT_BODY = JsonBody(PredictRequest)


@router.post("/v1/models/{name}/predict", dependencies=[READ], openapi_extra=_PREDICT_BODY.openapi)
async def predict(
    name: str,
    body: Annotated[PredictRequest, Depends(_PREDICT_BODY)],
    table: TableDep,
    serving: ServingDep,
    rollouts: RolloutsDep,
    entity_id: Annotated[
        str | None,
        Query(
            max_length=256,
            description="Whom the request is about: during a canary or A/B rollout it keeps one entity on one side.",
        ),
    ] = None,
) -> PredictResponse:
    """Score instances with the champion, or the challenger that serves them during a rollout; each prediction
    is published, so labels can join it later by id.

    With ``prediction_acks=wait`` a 503 means the broker did not take them.
    """
    body.check_finite()
    return await _predict(table, name, serving, rollouts, body.instances, entity_id)


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferInput(InferTensor):
    """A feature's column: one value per row, each a value a feature may hold."""

    data: list[RequestValue] = Field(min_length=1)


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[InferTensor]


@router.post("/v2/models/{name}/infer", dependencies=[READ])
async def infer(
    name: str, body: InferRequest, table: TableDep, serving: ServingDep, rollouts: RolloutsDep
) -> InferResponse:
    """Open Inference Protocol v2: one 1-D input tensor per feature, named after the feature."""
    _served(table, name)
    if twice := sorted(feature for feature, n in Counter(t.name for t in body.inputs).items() if n > 1):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "inputs"], "msg": f"one tensor per feature; more than one for {twice}"}],
        )
    sizes = {t.name: len(t.data) for t in body.inputs}
    if len(set(sizes.values())) != 1:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "inputs"], "msg": f"tensors differ in length: {sizes}"}],
        )
    n = next(iter(sizes.values()))
    instances: list[Features] = [{t.name: t.data[i] for t in body.inputs} for i in range(n)]
    result = await _predict(table, name, serving, rollouts, instances)
    return InferResponse(
        model_name=name,
        model_version=str(result.model_version),
        id=body.id or result.prediction_ids[0],
        outputs=[
            InferTensor(
                name="predict",
                shape=[n],
                datatype="BYTES" if any(isinstance(p, str) for p in result.predictions) else "INT64",
                data=list(result.predictions),
            ),
            InferTensor(name="prediction_id", shape=[n], datatype="BYTES", data=list(result.prediction_ids)),
        ],
    )


@router.get("/v2/models/{name}", dependencies=[READ])
async def model_metadata(name: str, table: TableDep) -> dict[str, Any]:
    served = _served(table, name)
    return {
        "name": name,
        "versions": [str(served.version)],
        "platform": "sklearn",
        "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in served.artifact.feature_names],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
    }


@router.get("/v1/deployments/{name}", dependencies=[READ])
async def deployment(
    name: str, table: TableDep, settings: Annotated[DeploymentSettings, Depends(get_settings)]
) -> DeploymentView:
    served = _served(table, name)
    split = table.split(name)
    rollout = {}
    if split is not None:
        rollout = {
            "strategy": split.rollout.strategy,
            "challenger_version": split.challenger.version,
            "challenger_percent": split.rollout.percent,
            "challenger_shadowed": split.rollout.shadowed,
        }
    return DeploymentView(
        **rollout,
        model_name=name,
        version=served.version,
        artifact_uri=served.artifact_uri,
        artifact_sha256=served.artifact_sha256,
        loaded_at=served.loaded_at,
        instance=settings.instance_id,
    )
