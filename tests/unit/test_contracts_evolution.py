"""Consumers read records from producers newer than themselves: unknown fields are ignored, not fatal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import ValidationError

from driftloop.aliases import Target
from driftloop.artifacts import open_store
from driftloop.bus import Bus, Record
from driftloop.config import load_config
from driftloop.contracts import DataEvent, Envelope, LabelEvent, ModelPromoted, parse_internal
from driftloop.contracts.events import GateDecision
from driftloop.services.deployment.domain import ServingTable
from driftloop.services.deployment.handlers import Rollouts
from driftloop.services.deployment.settings import DeploymentSettings

REPO = Path(__file__).resolve().parents[2]
MODEL = load_config(REPO / "driftloop.yaml").models[0].name


class ModelPromotedBeforeRevisions(Envelope):
    """``ModelPromoted`` as deployments built before alias revisions knew it."""

    event_type: Literal["io.driftloop.model.promoted.v1"] = "io.driftloop.model.promoted.v1"
    model_name: str
    version: int
    previous_version: int | None = None
    artifact_uri: str
    actor: str
    decision: GateDecision | None = None


class ModelPromotedFromTheFuture(ModelPromoted):
    """``ModelPromoted`` as a registry one release ahead writes it: one more optional field."""

    canary_percent: int | None = None


def _promoted(**fields: object) -> ModelPromoted:
    return ModelPromoted(model_name=MODEL, version=3, artifact_uri="file:///store/m/3", actor="gate", **fields)


def test_an_older_model_class_reads_a_record_with_a_new_optional_field() -> None:
    record = _promoted(revision=7, previous_version=2).model_dump_json()
    old = ModelPromotedBeforeRevisions.model_validate_json(record)
    assert (old.model_name, old.version, old.previous_version, old.artifact_uri) == (MODEL, 3, 2, "file:///store/m/3")
    assert json.loads(record)["revision"] == 7 and not hasattr(old, "revision")


def test_unknown_fields_in_nested_models_are_ignored_too() -> None:
    decision = {"metric": "f1", "challenger": 0.9, "champion": 0.8, "min_improvement": 0.01, "passed": True}
    raw = _promoted().model_dump() | {"decision": {**decision, "reason": "better", "holdout_rows": 500}}
    parsed = parse_internal(json.dumps(raw, default=str))
    assert isinstance(parsed, ModelPromoted) and parsed.decision is not None
    assert parsed.decision.challenger == 0.9


async def test_deployment_follows_a_promotion_written_by_a_newer_registry(tmp_path: Path) -> None:
    """The failure this guards against: a deployment that skipped such a record kept serving the old model."""
    settings = DeploymentSettings(home=tmp_path, config=REPO / "driftloop.yaml")
    rollouts = Rollouts(
        settings, load_config(settings.config), Bus(settings, "deployment"), open_store(settings), ServingTable()
    )
    newer = ModelPromotedFromTheFuture(
        model_name=MODEL, version=4, artifact_uri="file:///store/m/4", actor="gate", revision=9, canary_percent=5
    )
    record = Record("registry.events", 0, 12, MODEL, newer.model_dump_json().encode())
    await rollouts.on_record(record, live=False)
    assert rollouts.targets == {MODEL: Target(MODEL, 4, "file:///store/m/4", 9)}


@pytest.mark.parametrize("model", [DataEvent, LabelEvent])
def test_producer_payloads_still_reject_unknown_fields(model: type[DataEvent] | type[LabelEvent]) -> None:
    valid = {"event_id": "e-1", "entity_id": "u-1", "event_time": "2024-01-01T00:00Z", "features": {}, "label": 1}
    fields = {name: valid[name] for name in model.model_fields if name in valid}
    with pytest.raises(ValidationError, match="lable"):
        model.model_validate({**fields, "lable": 1})
