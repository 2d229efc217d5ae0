from __future__ import annotations

from driftloop.settings import ServiceSettings


class IngestionSettings(ServiceSettings):
    service: str = "ingestion"
