from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from driftloop.artifacts import open_store
from driftloop.bus import ConsumerLoop, follower_state, replay, wait_caught_up
from driftloop.config import DriftloopConfig
from driftloop.http import service_app
from driftloop.logging import get_logger
from driftloop.runtime import open_runtime
from driftloop.services.deployment.api import router
from driftloop.services.deployment.domain import ServingTable
from driftloop.services.deployment.handlers import Predictor, Rollouts
from driftloop.services.deployment.serving import MicroBatcher, Serving
from driftloop.services.deployment.settings import DeploymentSettings

log = get_logger(__name__)


def create_app(settings: DeploymentSettings | None = None, config: DriftloopConfig | None = None) -> FastAPI:
    settings = settings or DeploymentSettings()
    rollouts: Rollouts | None = None
    consumer: ConsumerLoop | None = None
    follower: asyncio.Task[None] | None = None
    rollout_follower: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal rollouts, consumer, follower, rollout_follower
        async with open_runtime(settings, config) as runtime:
            table = ServingTable()
            rollouts = Rollouts(settings, runtime.config, runtime.bus, open_store(settings), table)
            # The rollouts' states first: the registry's history then loads each challenger into its split.
            rollout_follower = asyncio.create_task(
                replay(settings, "deployment.events", rollouts.on_rollout_record, rollouts.on_rollouts_caught_up),
                name="rollout-follower",
            )
            await wait_caught_up(
                rollout_follower,
                rollouts.rollouts_caught_up,
                settings.catch_up_timeout_seconds,
                "deployment",
                "deployment.events",
            )
            follower = asyncio.create_task(
                replay(settings, "registry.events", rollouts.on_record, rollouts.on_caught_up), name="registry-follower"
            )
            await wait_caught_up(follower, rollouts.caught_up, settings.catch_up_timeout_seconds, "deployment")
            consumer = ConsumerLoop(
                settings,
                runtime.bus,
                service="deployment",
                topics=["features"],
                group="deployment",
                batch_handler=Predictor(runtime.config, runtime.bus, table, rollouts),
            )
            serving = Serving.configure(
                runtime.bus,
                settings.prediction_acks,
                settings.predict_thread_rows,
                settings.predict_batch_rows,
                settings.predict_batch_wait_ms,
            )
            serving.log.start()
            background = [follower, rollout_follower]
            if isinstance(serving.score, MicroBatcher):
                background.append(asyncio.create_task(serving.score.run(), name="micro-batcher"))
            app.state.runtime, app.state.table, app.state.serving = runtime, table, serving
            app.state.rollouts = rollouts
            await consumer.start()
            try:
                yield
            finally:
                await consumer.stop()
                # Predictions already answered go out before the producer stops.
                await serving.log.stop()
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)

    async def readiness() -> dict[str, bool | str]:
        return {
            "registry_followed": rollouts is not None and rollouts.caught_up.is_set(),
            "consumer": consumer.health() if consumer is not None else "not started",
            "follower": follower_state(follower),
            "rollout_follower": follower_state(rollout_follower),
        }

    app = service_app("deployment", lifespan, readiness, settings)
    app.include_router(router)
    return app
