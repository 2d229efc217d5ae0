"""Which version a model's champion alias points at, followed from ``registry.events`` in any order it arrives."""

from __future__ import annotations

from dataclasses import dataclass

from driftloop.contracts import ModelPromoted, ModelRolledBack


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
