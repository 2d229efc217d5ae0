"""What a replica serves: one loaded champion per model, swapped whole so requests never see half a swap."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from driftloop.contracts import utcnow
from driftloop.modeling import ModelArtifact


@dataclass(frozen=True)
class Served:
    model_name: str
    version: int
    artifact_uri: str
    artifact: ModelArtifact
    loaded_at: datetime = field(default_factory=utcnow)
    artifact_sha256: str | None = None


class ServingTable:
    """Champion per model. Readers take a reference; a swap replaces the reference in one assignment."""

    def __init__(self) -> None:
        self._served: dict[str, Served] = {}

    def get(self, model_name: str) -> Served | None:
        return self._served.get(model_name)

    def swap(self, served: Served) -> Served | None:
        previous = self._served.get(served.model_name)
        self._served[served.model_name] = served
        return previous

    def all(self) -> list[Served]:
        return list(self._served.values())
