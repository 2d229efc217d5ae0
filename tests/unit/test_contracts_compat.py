"""The compatibility check flags exactly the changes that make old records unreadable."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from driftloop.contracts.compat import Incompatibility, check_directory, compare_schemas
from driftloop.contracts.export import schema_documents

COMMITTED = Path(__file__).parents[2] / "contracts"

Schema = dict[str, Any]

BASE: Schema = {
    "type": "object",
    "additionalProperties": False,
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
            "additionalProperties": False,
            "properties": {"rows": {"type": "integer"}, "start": {"type": "string"}},
            "required": ["rows"],
        }
    },
}


def _add_required_owner(schema: Schema) -> None:
    schema["properties"]["owner"] = {"type": "string"}
    schema["required"].append("owner")


def _require_note(schema: Schema) -> None:
    schema["required"].append("note")


def _remove_count(schema: Schema) -> None:
    del schema["properties"]["count"]
    schema["required"].remove("count")


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


BREAKING: list[tuple[Callable[[Schema], None], str, str]] = [
    (_add_required_owner, "owner", "new required property"),
    (_require_note, "note", "optional property became required"),
    (_remove_count, "count", "property removed"),
    (_count_to_string, "count", "type changed"),
    (_remove_nested_start, "window.start", "property removed"),
    (_nested_rows_to_string, "window.rows", "type changed"),
    (_drop_enum_value, "kind", "values no longer allowed"),
    (_tags_to_integers, "tags[]", "type changed"),
    (_scores_to_strings, "scores.*", "type changed"),
    (_note_not_nullable, "note", "type changed: null"),
]

COMPATIBLE: list[Callable[[Schema], None]] = [
    _add_optional_owner,
    _count_nullable,
    _count_to_number,
    _add_enum_value,
    _count_no_longer_required,
    _rename_nested_model,
    _inline_nested_model,
    _unchanged,
]


def _edited(edit: Callable[[Schema], None]) -> Schema:
    schema = copy.deepcopy(BASE)
    edit(schema)
    return schema


@pytest.mark.parametrize(("edit", "path", "reason"), BREAKING, ids=[case[0].__name__ for case in BREAKING])
def test_breaking_changes_are_flagged(edit: Callable[[Schema], None], path: str, reason: str) -> None:
    problems = compare_schemas("thing.v1.json", BASE, _edited(edit))
    assert [(p.path, p.reason.startswith(reason)) for p in problems] == [(path, True)], problems


@pytest.mark.parametrize("edit", COMPATIBLE, ids=[edit.__name__ for edit in COMPATIBLE])
def test_compatible_changes_pass(edit: Callable[[Schema], None]) -> None:
    assert compare_schemas("thing.v1.json", BASE, _edited(edit)) == []


def test_narrowing_is_the_reverse_of_widening() -> None:
    widened = _edited(_count_nullable)
    assert compare_schemas("thing.v1.json", widened, BASE) != []


def test_incompatibility_reads_as_a_sentence() -> None:
    problem = Incompatibility("io.driftloop.label.v1.json", "label", "property removed")
    assert str(problem) == "io.driftloop.label.v1.json: label: property removed"
    assert str(Incompatibility("x.json", "", "schema removed")) == "x.json: <payload>: schema removed"


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
        Incompatibility("io.driftloop.drift.detected.v1.json", "legacy_field", "property removed")
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
