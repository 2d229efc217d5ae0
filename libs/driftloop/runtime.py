"""What every service does first: logs, config, topics, a producer.

Each service's ``create_app`` opens a ``Runtime`` in its lifespan and adds its
own consumers and stores on top, so the six bootstraps read alike.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from driftloop.bus import Bus, ensure_topics
from driftloop.config import DriftloopConfig, load_config
from driftloop.logging import configure_logging, get_logger
from driftloop.settings import DriftloopSettings, ServiceSettings

log = get_logger(__name__)
S = TypeVar("S", bound=ServiceSettings)


@dataclass
class Runtime(Generic[S]):
    settings: S
    config: DriftloopConfig
    bus: Bus


@asynccontextmanager
async def open_runtime(settings: S, config: DriftloopConfig | None = None) -> AsyncIterator[Runtime[S]]:
    configure_logging(settings.service, settings.log_level, settings.log_format)
    config = config or load_config(settings.config)
    created = await ensure_topics(settings)
    if created:
        log.info("created topics", topics=created)
    bus = Bus(settings, settings.service)
    await bus.start()
    tune_gc(settings)
    log.info("service starting", bootstrap=settings.bootstrap, port=settings.listen_port)
    try:
        yield Runtime(settings=settings, config=config, bus=bus)
    finally:
        await bus.stop()
        log.info("service stopped")


def tune_gc(settings: DriftloopSettings) -> None:
    """Leave what start-up built out of every later collection, and collect young objects less often
    (``DriftloopSettings.gc_threshold`` says why)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*settings.gc_threshold)
