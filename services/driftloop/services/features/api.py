"""The online store's lookup: the latest vector of an entity, per feature view."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status

from driftloop.contracts import FeatureVector
from driftloop.http import READ
from driftloop.services.features.streams import FeatureStreams

router = APIRouter(prefix="/v1", tags=["features"], dependencies=[READ])


def get_streams(request: Request) -> FeatureStreams:
    streams: FeatureStreams = request.app.state.streams
    return streams


StreamsDep = Annotated[FeatureStreams, Depends(get_streams)]


@router.get("/features/{entity_id}")
async def get_features(entity_id: str, streams: StreamsDep, view: str | None = None) -> dict[str, FeatureVector]:
    """Latest vector per view (or only ``view``); 404 when the entity has never been seen."""
    latest = streams.latest(entity_id)
    if not latest or (view is not None and view not in latest):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no features for entity {entity_id!r}")
    chosen = {view: latest[view]} if view else latest
    return {name: FeatureVector.model_validate(vector) for name, vector in chosen.items()}
