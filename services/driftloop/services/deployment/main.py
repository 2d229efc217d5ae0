from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from driftloop.artifacts import open_store
from driftloop.bus import ConsumerLoop, replay
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


class FollowerFailed(RuntimeError):
    """Deployment cannot know which model to serve: following ``registry.events`` stopped or never caught up."""


async def wait_caught_up(follower: asyncio.Task[None], caught_up: asyncio.Event, timeout: float) -> None:
    """Wait for the registry's history, or fail at once when the follower dies instead of hanging."""
    waiter = asyncio.create_task(caught_up.wait())
    try:
        done, _ = await asyncio.wait({follower, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if waiter in done:
        return
    if follower in done:
        failure = follower.exception() if not follower.cancelled() else None
        log.error("cannot follow registry.events", error=repr(failure))
        raise FollowerFailed(f"deployment cannot follow registry.events: {failure!r}") from failure
    follower.cancel()
    log.error("registry.events not caught up in time", timeout_seconds=timeout)
    raise FollowerFailed(f"deployment did not catch up with registry.events within {timeout:.0f}s")


def follower_state(follower: asyncio.Task[None] | None) -> bool | str:
    """Readiness of the registry follower: True while it runs, else why it stopped."""
    if follower is None:
        return "not started"
    if not follower.done():
        return True
    if follower.cancelled():
        return "stopped"
    return f"stopped: {follower.exception()!r}"


def create_app(settings: DeploymentSettings | None = None, config: DriftloopConfig | None = None) -> FastAPI:
    settings = settings or DeploymentSettings()
    rollouts: Rollouts | None = None
    consumer: ConsumerLoop | None = None
    follower: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal rollouts, consumer, follower
        async with open_runtime(settings, config) as runtime:
            table = ServingTable()
            rollouts = Rollouts(settings, runtime.config, runtime.bus, open_store(settings), table)
            follower = asyncio.create_task(
                replay(settings, "registry.events", rollouts.on_record, rollouts.on_caught_up), name="registry-follower"
            )
            await wait_caught_up(follower, rollouts.caught_up, settings.catch_up_timeout_seconds)
            consumer = ConsumerLoop(
                settings,
                runtime.bus,
                service="deployment",
                topics=["features"],
                group="deployment",
                batch_handler=Predictor(runtime.config, runtime.bus, table),
            )
            serving = Serving.configure(
                runtime.bus,
                settings.prediction_acks,
                settings.predict_thread_rows,
                settings.predict_batch_rows,
                settings.predict_batch_wait_ms,
            )
            serving.log.start()
            background = [follower]
            if isinstance(serving.score, MicroBatcher):
                background.append(asyncio.create_task(serving.score.run(), name="micro-batcher"))
            app.state.runtime, app.state.table, app.state.serving = runtime, table, serving
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
        }

    app = service_app("deployment", lifespan, readiness, settings)
    app.include_router(router)
    return app
