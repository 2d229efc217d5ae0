from __future__ import annotations

from driftloop.settings import ServiceSettings


class IngestionSettings(ServiceSettings):
    service: str = "ingestion"
    #: A single HTTP request may carry at most this many events.
    max_batch: int = 10_000
