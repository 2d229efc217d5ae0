from __future__ import annotations

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
from driftloop.services.registry.api import router
from driftloop.services.registry.approvals import ApprovalWatch
from driftloop.services.registry.dashboard import router as dashboard
from driftloop.services.registry.handlers import Evaluator, RolloutHandler, RunHandler
from driftloop.services.registry.mlflow_api import router as mlflow
from driftloop.services.registry.settings import RegistrySettings
from driftloop.services.registry.store import Registry, create_tables


def create_app(settings: RegistrySettings | None = None, config: DriftloopConfig | None = None) -> FastAPI:
    settings = settings or RegistrySettings()
    consumer: ConsumerLoop | None = None
    rollouts: ConsumerLoop | None = None
    engine: Engine | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal consumer, rollouts, engine
        async with open_runtime(settings, config) as runtime:
            engine = make_engine(settings.db_url)
            create_tables(engine)
            registry = Registry(engine)
            relay = OutboxRelay(
                engine, runtime.bus, "registry", holder=settings.instance_id, lease_seconds=settings.lease_seconds
            )
            handler = RunHandler(
                registry,
                Evaluator(open_store(settings)),
                runtime.config.promotion,
                relay,
                categorical=runtime.config.dataset.categorical(),
                schema_fingerprint=runtime.config.dataset.fingerprint(),
                rollout_for=runtime.config.rollout_for,
            )
            watch = ApprovalWatch(registry, runtime.config.promotion, relay, settings.approval_check_seconds)
            consumer = ConsumerLoop(
                settings, runtime.bus, service="registry", topics=["training.runs"], group="registry", handler=handler
            )
            rollouts = ConsumerLoop(
                settings,
                runtime.bus,
                service="registry",
                topics=["deployment.events"],
                group="registry-rollouts",
                handler=RolloutHandler(registry, relay),
            )
            app.state.registry, app.state.relay = registry, relay
            app.state.promotion = runtime.config.promotion
            app.state.rollout_for = runtime.config.rollout_for
            relay.start()
            watch.start()
            await consumer.start()
            await rollouts.start()
            try:
                yield
            finally:
                await rollouts.stop()
                await consumer.stop()
                await watch.stop()
                await relay.stop()
                engine.dispose()

    async def readiness() -> dict[str, bool | str]:
        return {
            "consumer": consumer.health() if consumer is not None else "not started",
            "rollouts": rollouts.health() if rollouts is not None else "not started",
            "database": engine is not None and reachable(engine),
        }

    app = service_app("registry", lifespan, readiness, settings)
    app.state.settings = settings
    app.include_router(router)
    app.include_router(dashboard)
    app.include_router(mlflow)
    return app
