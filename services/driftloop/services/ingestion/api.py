"""HTTP intake for producers that don't speak Kafka: same contract, same validation, same topic."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel

from driftloop.auth import Role
from driftloop.contracts import DataEvent, LabelEvent, ProducerContract, utcnow
from driftloop.http import require
from driftloop.runtime import Runtime
from driftloop.services.ingestion.domain import SchemaCheck, TooMany, split_body, validate_event
from driftloop.services.ingestion.settings import IngestionSettings
from driftloop.validation import Invalid, validate_label

router = APIRouter(prefix="/v1", tags=["ingestion"])


def get_runtime(request: Request) -> Runtime[IngestionSettings]:
    runtime: Runtime[IngestionSettings] = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime[IngestionSettings], Depends(get_runtime)]


def get_schema_check(request: Request) -> SchemaCheck:
    check: SchemaCheck = request.app.state.schema_check
    return check


SchemaCheckDep = Annotated[SchemaCheck, Depends(get_schema_check)]


class Accepted(BaseModel):
    accepted: int
    event_ids: list[str]


def _unprocessable(errors: list[dict[str, Any]]) -> HTTPException:
    return HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=errors)


def _detail(index: int | None, exc: Invalid) -> list[dict[str, Any]]:
    """FastAPI's error shape: ``loc`` names the item and the field, ``msg`` the reason."""
    where: list[str | int] = ["body"] if index is None else ["body", index]
    return [{"loc": [*where, *e.field.split(".")], "msg": e.message, "type": "value_error"} for e in exc.errors]


def _body(contract: type[ProducerContract]) -> dict[str, Any]:
    """The request body as the OpenAPI document shows it: the endpoint parses it itself (one object, an array,
    or NDJSON), so FastAPI cannot derive it, and without it a client (or schemathesis) sees no body at all."""
    one = contract.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"anyOf": [one, {"type": "array", "items": one}]}},
                "application/x-ndjson": {},
            },
        }
    }


async def _items(request: Request, limit: int) -> list[Any]:
    try:
        return split_body(await request.body(), request.headers.get("content-type", ""), limit)
    except Invalid as exc:
        raise _unprocessable(_detail(None, exc)) from exc
    except TooMany as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[require(Role.producer)],
    openapi_extra=_body(DataEvent),
)
async def post_events(request: Request, runtime: RuntimeDep, check: SchemaCheckDep) -> Accepted:
    """Accept one event, a JSON array or NDJSON; all-or-nothing, so a 422 means nothing was sent."""
    arrived = utcnow()
    items = await _items(request, runtime.settings.max_batch)
    events, errors = [], []
    for index, item in enumerate(items):
        try:
            events.append(validate_event(item, check, arrived))
        except Invalid as exc:
            errors += _detail(index if len(items) > 1 else None, exc)
    if errors:
        raise _unprocessable(errors)
    await runtime.bus.publish_many([(event, event.entity_id) for event in events])
    return Accepted(accepted=len(events), event_ids=[e.event_id for e in events])


@router.post(
    "/labels",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[require(Role.producer)],
    openapi_extra=_body(LabelEvent),
)
async def post_labels(request: Request, runtime: RuntimeDep) -> Accepted:
    items = await _items(request, runtime.settings.max_batch)
    labels, errors = [], []
    for index, item in enumerate(items):
        try:
            labels.append(validate_label(item, runtime.config.dataset.label))
        except Invalid as exc:
            errors += _detail(index if len(items) > 1 else None, exc)
    if errors:
        raise _unprocessable(errors)
    await runtime.bus.publish_many([(label, label.event_id) for label in labels])
    return Accepted(accepted=len(labels), event_ids=[label.event_id for label in labels])
