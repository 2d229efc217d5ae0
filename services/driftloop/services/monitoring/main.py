from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from driftloop.config import DriftloopConfig
from driftloop.http import service_app
from driftloop.runtime import open_runtime
from driftloop.services.monitoring.api import router
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.services.monitoring.streams import MonitorStreams, build
from driftloop.streams import StreamHealth, started


def create_app(settings: MonitoringSettings | None = None, config: DriftloopConfig | None = None) -> FastAPI:
    settings = settings or MonitoringSettings()
    streams: MonitorStreams | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal streams
        async with open_runtime(settings, config) as runtime:
            streams = build(settings, runtime.config)
            app.state.streams = streams
            async with started(streams.app, settings):
                yield

    health = StreamHealth(settings.consumer_stall_seconds)

    async def readiness() -> dict[str, bool | str]:
        return {"streams": health(streams.app if streams else None)}

    app = service_app("monitoring", lifespan, readiness, settings)
    app.include_router(router)
    return app
