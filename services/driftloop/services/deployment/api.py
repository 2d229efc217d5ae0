"""Prediction over REST (driftloop's shape and the Open Inference Protocol v2) and the deployment status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field

from driftloop.contracts import Prediction, new_event_id
from driftloop.contracts.events import Features, LabelValue
from driftloop.http import READ
from driftloop.services.deployment.domain import Served, ServingTable
from driftloop.services.deployment.metrics import PREDICTIONS
from driftloop.services.deployment.serving import PublishFailed, Serving
from driftloop.services.deployment.settings import DeploymentSettings

router = APIRouter(tags=["deployment"])


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


TableDep = Annotated[ServingTable, Depends(get_table)]
ServingDep = Annotated[Serving, Depends(get_serving)]


class PredictRequest(BaseModel):
    #: How many is bounded for every request by ``max_batch`` (driftloop.http), before this model is built.
    instances: list[Features] = Field(min_length=1)


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
    strategy: Literal["direct"] = "direct"
    instance: str


def _served(table: ServingTable, name: str) -> Served:
    served = table.get(name)
    if served is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no champion of {name!r} is loaded")
    return served


async def _predict(served: Served, serving: Serving, instances: list[Features]) -> PredictResponse:
    labels, probabilities = await serving.score(served, instances)
    ids = [new_event_id() for _ in instances]
    predictions = [
        Prediction(
            event_id=pid,
            source_event_id=pid,
            model_name=served.model_name,
            model_version=served.version,
            channel="rest",
            prediction=label,
            probability=p,
        )
        for pid, label, p in zip(ids, labels, probabilities, strict=True)
    ]
    try:
        await serving.log.record(predictions)
    except PublishFailed as exc:
        PREDICTIONS.labels(served.model_name, "rest", "unpublished").inc(len(ids))
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"predictions not recorded: {exc}") from exc
    PREDICTIONS.labels(served.model_name, "rest", "ok").inc(len(ids))
    return PredictResponse(
        model_version=served.version, predictions=labels, probabilities=probabilities, prediction_ids=ids
    )


@router.post("/v1/models/{name}/predict", dependencies=[READ])
async def predict(name: str, body: PredictRequest, table: TableDep, serving: ServingDep) -> PredictResponse:
    """Score instances with the champion; each prediction is published, so labels can join it later by id.

    With ``prediction_acks=wait`` a 503 means the broker did not take them.
    """
    return await _predict(_served(table, name), serving, body.instances)


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[InferTensor]


@router.post("/v2/models/{name}/infer", dependencies=[READ])
async def infer(name: str, body: InferRequest, table: TableDep, serving: ServingDep) -> InferResponse:
    """Open Inference Protocol v2: one 1-D input tensor per feature, named after the feature."""
    served = _served(table, name)
    sizes = {t.name: len(t.data) for t in body.inputs}
    if len(set(sizes.values())) != 1:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "inputs"], "msg": f"tensors differ in length: {sizes}"}],
        )
    n = next(iter(sizes.values()))
    instances: list[Features] = [{t.name: t.data[i] for t in body.inputs} for i in range(n)]
    result = await _predict(served, serving, instances)
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
    return DeploymentView(
        model_name=name,
        version=served.version,
        artifact_uri=served.artifact_uri,
        artifact_sha256=served.artifact_sha256,
        loaded_at=served.loaded_at,
        instance=settings.instance_id,
    )
