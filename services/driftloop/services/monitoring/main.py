from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from driftloop.artifacts import open_store
from driftloop.bus import ConsumerLoop, follower_state, replay, wait_caught_up
from driftloop.config import DriftloopConfig
from driftloop.http import service_app
from driftloop.runtime import open_runtime
from driftloop.services.monitoring.api import router
from driftloop.services.monitoring.references import References
from driftloop.services.monitoring.routing import Router
from driftloop.services.monitoring.settings import MonitoringSettings
from driftloop.services.monitoring.streams import MonitorStreams, build


def create_app(settings: MonitoringSettings | None = None, config: DriftloopConfig | None = None) -> FastAPI:
    settings = settings or MonitoringSettings()
    streams: MonitorStreams | None = None
    follower: asyncio.Task[None] | None = None
    router_loop: ConsumerLoop | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal streams, follower, router_loop
        async with open_runtime(settings, config) as runtime:
            models = {m.name for m in runtime.config.models}
            references = References(models, open_store(settings), runtime.config.drift.data)
            follower = asyncio.create_task(
                replay(settings, "registry.events", references.on_record, references.on_caught_up),
                name="registry-follower",
            )
            # Rows are judged against the champion the registry names, so its history comes first.
            await wait_caught_up(follower, references.caught_up, settings.catch_up_timeout_seconds, "monitoring")
            streams = build(settings, runtime.config, runtime.bus, references)
            app.state.streams = streams
            router_loop = ConsumerLoop(
                settings,
                runtime.bus,
                service="monitoring",
                topics=["predictions", "labels", "features"],
                group="monitoring-route",
                batch_handler=Router(runtime.bus, runtime.config, settings.data_rows_per_record),
                # The join recognises a repeated prediction or label by its entry.
                dedupe_key=None,
            )
            try:
                await streams.start(settings)
                await router_loop.start()
                try:
                    yield
                finally:
                    await router_loop.stop()
                    await streams.stop()
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower

    async def readiness() -> dict[str, bool | str]:
        return {
            **(streams.health() if streams is not None else {"streams": "not started"}),
            "router": router_loop.health() if router_loop is not None else "not started",
            "registry": follower_state(follower),
        }

    app = service_app("monitoring", lifespan, readiness, settings)
    app.include_router(router)
    # The dashboard is served by the registry, on another origin, and reads the history from here.
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"], allow_headers=["Authorization"])
    return app
