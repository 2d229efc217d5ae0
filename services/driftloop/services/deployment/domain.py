"""What a replica serves: one loaded champion per model, swapped whole so requests never see half a swap."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from driftloop.contracts import ModelPromoted, ModelRolledBack, utcnow
from driftloop.modeling import ModelArtifact


@dataclass(frozen=True)
class Served:
    model_name: str
    version: int
    artifact_uri: str
    artifact: ModelArtifact
    loaded_at: datetime = field(default_factory=utcnow)
    artifact_sha256: str | None = None


@dataclass(frozen=True)
class Target:
    """The version the registry says should be champion, as of the model's alias ``revision``."""

    model_name: str
    version: int
    artifact_uri: str
    #: None on events from before the registry numbered its alias changes.
    revision: int | None = None
    #: What the artifact's bytes must hash to; None on events from before checksums, whose loads are refused.
    artifact_sha256: str | None = None

    @classmethod
    def of(cls, event: ModelPromoted | ModelRolledBack) -> Target:
        version = event.version if isinstance(event, ModelPromoted) else event.to_version
        return cls(event.model_name, version, event.artifact_uri, event.revision, event.artifact_sha256)

    def supersedes(self, current: Target | None) -> bool:
        """Whether this alias change should replace ``current``.

        Revisions only go up at the registry, so a change whose revision is
        not above the current one is a reordered or replayed older change and
        must not win. Without a revision on either side there is nothing to
        compare, and the later arrival wins, as before revisions existed.
        """
        if current is None or self.revision is None or current.revision is None:
            return True
        return self.revision > current.revision


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
