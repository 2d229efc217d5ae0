from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from driftloop.artifacts import open_store
from driftloop.bus import ConsumerLoop
from driftloop.config import DriftloopConfig
from driftloop.db import OutboxRelay, make_engine, reachable
from driftloop.http import service_app
from driftloop.runtime import open_runtime
from driftloop.services.training.api import router
from driftloop.services.training.handlers import RequestHandlers, RunWorker
from driftloop.services.training.settings import TrainingSettings
from driftloop.services.training.store import RunStore, create_tables


def create_app(settings: TrainingSettings | None = None, config: DriftloopConfig | None = None) -> FastAPI:
    settings = settings or TrainingSettings()
    consumer: ConsumerLoop | None = None
    engine: Engine | None = None
    worker_task: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal consumer, worker_task, engine
        async with open_runtime(settings, config) as runtime:
            engine = make_engine(settings.db_url)
            create_tables(engine)
            runs = RunStore(engine)
            relay = OutboxRelay(
                engine, runtime.bus, "training", holder=settings.instance_id, lease_seconds=settings.lease_seconds
            )
            worker = RunWorker(settings, runtime.config, runs, open_store(settings), relay)
            consumer = ConsumerLoop(
                settings,
                runtime.bus,
                service="training",
                topics=["training.requests", "drift"],
                group="training",
                handler=RequestHandlers(runs, runtime.config, worker.wakeup),
            )
            app.state.runtime, app.state.runs = runtime, runs
            relay.start()
            await consumer.start()
            worker_task = asyncio.create_task(worker.run_forever(), name="training-worker")
            try:
                yield
            finally:
                worker_task.cancel()
                await asyncio.gather(worker_task, return_exceptions=True)
                await consumer.stop()
                await relay.stop()
                engine.dispose()

    async def readiness() -> dict[str, bool | str]:
        return {
            "consumer": consumer.health() if consumer is not None else "not started",
            "database": engine is not None and reachable(engine),
            "worker": worker_task is not None and not worker_task.done(),
        }

    app = service_app("training", lifespan, readiness, settings)
    app.include_router(router)
    return app
