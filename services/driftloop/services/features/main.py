from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from driftloop.artifacts import open_store
from driftloop.config import DriftloopConfig
from driftloop.http import service_app
from driftloop.runtime import open_runtime
from driftloop.services.features.api import router
from driftloop.services.features.settings import FeaturesSettings
from driftloop.services.features.streams import FeatureStreams, build


def create_app(settings: FeaturesSettings | None = None, config: DriftloopConfig | None = None) -> FastAPI:
    settings = settings or FeaturesSettings()
    streams: FeatureStreams | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal streams
        async with open_runtime(settings, config) as runtime:
            streams = build(settings, runtime.config, runtime.bus, open_store(settings))
            app.state.streams = streams
            await streams.start()
            try:
                yield
            finally:
                await streams.stop()

    async def readiness() -> dict[str, bool | str]:
        return streams.health() if streams is not None else {"streams": "not started"}

    app = service_app("features", lifespan, readiness, settings)
    app.include_router(router)
    return app
