"""Which version is each model's champion, and the reference sample each version was built on.

Every replica follows ``registry.events`` from its start (no group), as
deployment does: the champion and the reference URIs are a few records per
model, and every replica's data-drift agent may own any model. References are
read from the artifact store (whose reads refuse URIs outside it) in a worker
thread, once per version, and kept as built profiles.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from driftloop.aliases import Target
from driftloop.artifacts import ArtifactNotFound, ArtifactRefused, ArtifactStore
from driftloop.bus import Record
from driftloop.config import DataDriftPolicy
from driftloop.contracts import ModelPromoted, ModelRolledBack, ModelVersionRegistered, parse_internal
from driftloop.logging import get_logger
from driftloop.reference import ReferenceSample
from driftloop.services.monitoring.datawatch import VersionReference

log = get_logger(__name__)


class References:
    def __init__(self, models: set[str], store: ArtifactStore, policy: DataDriftPolicy) -> None:
        self.models = models
        self.store = store
        self.policy = policy
        self.targets: dict[str, Target] = {}
        self.uris: dict[tuple[str, int], str] = {}
        self.caught_up = asyncio.Event()
        self._loads: dict[tuple[str, int], asyncio.Task[VersionReference | None]] = {}

    async def on_record(self, record: Record, live: bool) -> None:
        try:
            event = parse_internal(record.value)
        except ValidationError:
            log.warning("unreadable record on registry.events skipped", offset=record.offset)
            return
        if getattr(event, "model_name", None) not in self.models:
            return
        if isinstance(event, ModelVersionRegistered) and event.reference_uri:
            self.uris[(event.model_name, event.version)] = event.reference_uri
        elif isinstance(event, ModelPromoted | ModelRolledBack):
            target = Target.of(event)
            if target.supersedes(self.targets.get(target.model_name)):
                self.targets[target.model_name] = target

    async def on_caught_up(self) -> None:
        self.caught_up.set()
        log.info("champions known", models={m: t.version for m, t in self.targets.items()})

    def champion(self, model: str) -> int | None:
        target = self.targets.get(model)
        return target.version if target else None

    def cached(self, model: str, version: int) -> VersionReference | None:
        """The reference if it was loaded already; never waits."""
        load = self._loads.get((model, version))
        return load.result() if load is not None and load.done() and not load.cancelled() else None

    async def reference(self, model: str, version: int) -> VersionReference | None:
        """The version's reference, loaded once; None when it has none or it cannot be read (logged)."""
        key = (model, version)
        if key not in self._loads:
            self._loads[key] = asyncio.create_task(self._load(model, version))
        return await asyncio.shield(self._loads[key])

    async def _load(self, model: str, version: int) -> VersionReference | None:
        uri = self.uris.get((model, version))
        if uri is None:
            log.warning("no reference sample for this version: no data drift or estimate", model=model, version=version)
            return None
        try:
            return await asyncio.to_thread(self._read, uri)
        except (ArtifactNotFound, ArtifactRefused, ValueError, KeyError, TypeError) as exc:
            log.error("reference sample unreadable", model=model, version=version, uri=uri, error=repr(exc))
            return None

    def _read(self, uri: str) -> VersionReference:
        return VersionReference.from_sample(ReferenceSample.from_bytes(self.store.get(uri)), self.policy)
