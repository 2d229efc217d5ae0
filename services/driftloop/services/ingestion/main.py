from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from driftloop.bus import ConsumerLoop
from driftloop.config import DriftloopConfig
from driftloop.http import service_app
from driftloop.runtime import open_runtime
from driftloop.services.ingestion.api import router
from driftloop.services.ingestion.domain import SchemaCheck
from driftloop.services.ingestion.handlers import RawEventHandler, producer_event_id
from driftloop.services.ingestion.settings import IngestionSettings


def create_app(settings: IngestionSettings | None = None, config: DriftloopConfig | None = None) -> FastAPI:
    settings = settings or IngestionSettings()
    consumer: ConsumerLoop | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal consumer
        async with open_runtime(settings, config) as runtime:
            app.state.runtime = runtime
            app.state.schema_check = SchemaCheck(runtime.config.dataset)
            consumer = ConsumerLoop(
                settings,
                runtime.bus,
                service="ingestion",
                topics=["events.raw"],
                group="ingestion",
                batch_handler=RawEventHandler(runtime.bus, app.state.schema_check),
                dedupe_key=producer_event_id,
            )
            await consumer.start()
            try:
                yield
            finally:
                await consumer.stop()

    async def readiness() -> dict[str, bool | str]:
        return {"consumer": consumer.health() if consumer is not None else "not started"}

    app = service_app("ingestion", lifespan, readiness, settings)
    app.include_router(router)
    return app
