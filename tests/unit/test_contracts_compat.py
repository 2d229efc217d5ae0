"""The compatibility check flags exactly the changes that make old records unreadable."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from driftloop.cli.main import app
from driftloop.contracts import DataEvent, ModelPromoted
from driftloop.contracts.compat import Incompatibility, check_directory, compare_schemas, reading
from driftloop.contracts.export import schema_documents

COMMITTED = Path(__file__).parents[2] / "contracts"

Schema = dict[str, Any]

BASE: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "count": {"type": "integer"},
        "kind": {"enum": ["concept", "data"], "type": "string"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "window": {"$ref": "#/$defs/Window"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
    },
    "required": ["id", "count", "window"],
    "$defs": {
        "Window": {
            "type": "object",
            "properties": {"rows": {"type": "integer"}, "start": {"type": "string"}},
            "required": ["rows"],
        }
    },
}
"""A payload as the models describe one now: unknown fields are ignored, so no ``additionalProperties``."""


def _closed(schema: Schema) -> None:
    """A payload that forbids unknown fields, as every payload did before."""
    schema["additionalProperties"] = False
    schema["$defs"]["Window"]["additionalProperties"] = False


def _add_required_owner(schema: Schema) -> None:
    schema["properties"]["owner"] = {"type": "string"}
    schema["required"].append("owner")


def _require_note(schema: Schema) -> None:
    schema["required"].append("note")


def _remove_count(schema: Schema) -> None:
    del schema["properties"]["count"]
    schema["required"].remove("count")


def _remove_note(schema: Schema) -> None:
    del schema["properties"]["note"]


def _count_to_string(schema: Schema) -> None:
    schema["properties"]["count"] = {"type": "string"}


def _remove_nested_start(schema: Schema) -> None:
    del schema["$defs"]["Window"]["properties"]["start"]


def _nested_rows_to_string(schema: Schema) -> None:
    schema["$defs"]["Window"]["properties"]["rows"] = {"type": "string"}


def _drop_enum_value(schema: Schema) -> None:
    schema["properties"]["kind"]["enum"] = ["concept"]


def _tags_to_integers(schema: Schema) -> None:
    schema["properties"]["tags"]["items"] = {"type": "integer"}


def _scores_to_strings(schema: Schema) -> None:
    schema["properties"]["scores"]["additionalProperties"] = {"type": "string"}


def _note_not_nullable(schema: Schema) -> None:
    schema["properties"]["note"] = {"type": "string"}


def _add_optional_owner(schema: Schema) -> None:
    schema["properties"]["owner"] = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}


def _count_nullable(schema: Schema) -> None:
    schema["properties"]["count"] = {"anyOf": [{"type": "integer"}, {"type": "null"}]}


def _count_to_number(schema: Schema) -> None:
    schema["properties"]["count"] = {"type": "number"}


def _add_enum_value(schema: Schema) -> None:
    schema["properties"]["kind"]["enum"].append("label")


def _count_no_longer_required(schema: Schema) -> None:
    schema["required"].remove("count")


def _rename_nested_model(schema: Schema) -> None:
    """Wire data does not carry class names, so only the structure behind a ``$ref`` matters."""
    schema["$defs"]["DataWindow"] = schema["$defs"].pop("Window")
    schema["properties"]["window"] = {"$ref": "#/$defs/DataWindow", "description": "renamed"}


def _inline_nested_model(schema: Schema) -> None:
    schema["properties"]["window"] = schema["$defs"].pop("Window")


def _unchanged(schema: Schema) -> None:
    """An identical schema."""


Edit = Callable[[Schema], None]

#: Each change, and every (path, direction, reason) it breaks: backward = the new model reads old records,
#: forward = consumers still on the committed schema read the new model's records.
BREAKING: list[tuple[Edit, list[tuple[str, str, str]]]] = [
    (_add_required_owner, [("owner", "backward", "new required property")]),
    (_require_note, [("note", "backward", "optional property became required")]),
    (_note_not_nullable, [("note", "backward", "type changed: null not accepted")]),
    (_drop_enum_value, [("kind", "backward", "values not accepted")]),
    (_remove_count, [("count", "forward", "property removed")]),
    (_remove_note, [("note", "forward", "property removed")]),
    (_remove_nested_start, [("window.start", "forward", "property removed")]),
    (_count_no_longer_required, [("count", "forward", "required property became optional")]),
    (_count_nullable, [("count", "forward", "type changed: null not accepted")]),
    (_count_to_number, [("count", "forward", "type changed: number not accepted")]),
    (_add_enum_value, [("kind", "forward", "values not accepted")]),
    (_count_to_string, [("count", "backward", "type changed"), ("count", "forward", "type changed")]),
    (_nested_rows_to_string, [("window.rows", "backward", "type changed"), ("window.rows", "forward", "type changed")]),
    (_tags_to_integers, [("tags[]", "backward", "type changed"), ("tags[]", "forward", "type changed")]),
    (_scores_to_strings, [("scores.*", "backward", "type changed"), ("scores.*", "forward", "type changed")]),
]

COMPATIBLE: list[Edit] = [_add_optional_owner, _rename_nested_model, _inline_nested_model, _unchanged]


def _edited(*edits: Edit) -> Schema:
    schema = copy.deepcopy(BASE)
    for edit in edits:
        edit(schema)
    return schema


@pytest.mark.parametrize(("edit", "expected"), BREAKING, ids=[case[0].__name__ for case in BREAKING])
def test_breaking_changes_are_flagged_in_the_direction_they_break(
    edit: Edit, expected: list[tuple[str, str, str]]
) -> None:
    problems = compare_schemas("thing.v1.json", BASE, _edited(edit))
    assert [(p.path, p.direction) for p in problems] == [(path, direction) for path, direction, _ in expected]
    assert all(p.reason.startswith(reason) for p, (_, _, reason) in zip(problems, expected, strict=True)), problems


@pytest.mark.parametrize("edit", COMPATIBLE, ids=[edit.__name__ for edit in COMPATIBLE])
def test_compatible_changes_pass_both_ways(edit: Edit) -> None:
    assert compare_schemas("thing.v1.json", BASE, _edited(edit)) == []


def test_a_new_optional_property_breaks_readers_that_forbid_unknown_fields() -> None:
    """What happened to ``ModelPromoted``: deployments on the closed schema skipped records with a new field."""
    problems = compare_schemas("thing.v1.json", _edited(_closed), _edited(_closed, _add_optional_owner))
    assert [(p.path, p.direction) for p in problems] == [("owner", "forward")]
    assert "reject as unknown" in problems[0].reason


def test_a_property_dropped_by_a_reader_that_forbids_unknown_fields_breaks_backward() -> None:
    problems = reading("thing.v1.json", writer=BASE, reader=_edited(_closed, _remove_note), direction="backward")
    assert [(p.path, p.reason) for p in problems] == [
        ("note", "property removed, and the current model rejects unknown fields")
    ]


def test_opening_a_closed_payload_is_compatible() -> None:
    """The move to ignoring unknown fields itself: old and new readers both read both writers' records."""
    assert compare_schemas("thing.v1.json", _edited(_closed), BASE) == []


def test_a_dict_field_that_stops_taking_free_keys_breaks_backward() -> None:
    closed_scores = _edited()
    closed_scores["properties"]["scores"]["additionalProperties"] = False
    problems = compare_schemas("thing.v1.json", BASE, closed_scores)
    assert [(p.path, p.direction, p.reason) for p in problems] == [
        ("scores", "backward", "additional properties not accepted")
    ]


def test_incompatibility_reads_as_a_sentence() -> None:
    problem = Incompatibility("io.driftloop.label.v1.json", "label", "property removed", "forward")
    assert str(problem) == "io.driftloop.label.v1.json: label: property removed (forward)"
    assert str(Incompatibility("x.json", "", "schema removed")) == "x.json: <payload>: schema removed (backward)"


def test_every_current_schema_is_compatible_with_itself() -> None:
    for name, document in schema_documents().items():
        assert compare_schemas(name, document, copy.deepcopy(document)) == []


def test_committed_contracts_are_compatible_with_the_models() -> None:
    assert check_directory(COMMITTED) == []


def _committed_copy(tmp_path: Path) -> Path:
    shutil.copytree(COMMITTED / "schemas", tmp_path / "schemas")
    return tmp_path


def test_a_property_the_models_dropped_is_reported(tmp_path: Path) -> None:
    committed = _committed_copy(tmp_path)
    path = committed / "schemas" / "io.driftloop.drift.detected.v1.json"
    schema = json.loads(path.read_text())
    schema["properties"]["legacy_field"] = {"type": "string"}
    path.write_text(json.dumps(schema))
    assert check_directory(committed) == [
        Incompatibility(
            "io.driftloop.drift.detected.v1.json",
            "legacy_field",
            "property removed: consumers of the committed schema still expect it",
            "forward",
        )
    ]


def test_a_payload_type_the_models_dropped_is_reported(tmp_path: Path) -> None:
    committed = _committed_copy(tmp_path)
    (committed / "schemas" / "io.driftloop.retired.v1.json").write_text("{}")
    problems = check_directory(committed)
    assert [(p.schema, p.reason.startswith("schema removed")) for p in problems] == [
        ("io.driftloop.retired.v1.json", True)
    ]


def test_a_payload_type_added_since_the_commit_is_compatible(tmp_path: Path) -> None:
    committed = _committed_copy(tmp_path)
    (committed / "schemas" / "io.driftloop.label.v1.json").unlink()
    assert check_directory(committed) == []


def _committed(name: str) -> Schema:
    document: Schema = json.loads((COMMITTED / "schemas" / name).read_text(encoding="utf-8"))
    return document


PROMOTED = f"{ModelPromoted.EVENT_TYPE}.json"


def test_a_new_optional_field_on_model_promoted_passes_against_the_committed_schema() -> None:
    class NextModelPromoted(ModelPromoted):
        canary_percent: int | None = None

    assert compare_schemas(PROMOTED, _committed(PROMOTED), NextModelPromoted.model_json_schema()) == []


def test_a_new_required_field_on_model_promoted_fails_backward() -> None:
    class NextModelPromoted(ModelPromoted):
        canary_percent: int

    problems = compare_schemas(PROMOTED, _committed(PROMOTED), NextModelPromoted.model_json_schema())
    assert [(p.path, p.direction, p.reason) for p in problems] == [
        ("canary_percent", "backward", "new required property")
    ]


def test_a_new_field_on_the_producer_contract_fails_forward() -> None:
    """Producer payloads forbid unknown fields, so an ingestion on the committed schema would dead-letter it."""
    name = f"{DataEvent.EVENT_TYPE}.json"

    class NextDataEvent(DataEvent):
        source: str | None = None

    problems = compare_schemas(name, _committed(name), NextDataEvent.model_json_schema())
    assert [(p.path, p.direction) for p in problems] == [("source", "forward")]


def test_contracts_check_exits_non_zero_and_names_the_direction(tmp_path: Path) -> None:
    committed = _committed_copy(tmp_path)
    path = committed / "schemas" / PROMOTED
    schema = json.loads(path.read_text())
    schema["properties"]["version"] = {"type": "string"}
    path.write_text(json.dumps(schema))
    failed = CliRunner().invoke(app, ["contracts", "check", "--committed", str(committed)])
    assert failed.exit_code == 1
    assert "version: type changed" in failed.output
    assert "(backward)" in failed.output and "(forward)" in failed.output
    passed = CliRunner().invoke(app, ["contracts", "check", "--committed", str(COMMITTED)])
    assert (passed.exit_code, "compatible" in passed.output) == (0, True)
