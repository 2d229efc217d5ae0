"""Full-compatibility check of the current payload schemas against the committed ones.

Records outlive the code that wrote them and consumers are not upgraded in
step with producers, so every change must keep both directions working:

- **backward**: a consumer built from the current models reads every record
  written with the committed schema (topics are replayed from the start);
- **forward**: a consumer still built from the committed schema reads every
  record the current models write (producers are often upgraded first).

Each direction is the same question, whether a *reader* schema accepts what a
*writer* schema produces, asked with the roles swapped. Records are written by
serialising a model, so a writer's record holds only its declared properties
(plus the free keys of dict-typed fields such as ``features``), while a
reader that does not forbid extra properties ignores the ones it does not
know. Under that rule adding an optional property is compatible both ways;
adding a required one breaks backward; removing one breaks forward, because
consumers of the committed schema still expect it (a required one fails to
parse, an optional one reads as its default and changes meaning); and a type,
``enum`` or ``const`` must neither narrow (backward) nor widen (forward). A
change that breaks this belongs in a new, versioned event type.

Only what decides whether a record still validates is compared: property
sets, ``required``, JSON types (an integer is a number), ``enum``/``const``
values and additional properties, following ``$ref`` into the document's own
``$defs`` so nested models are held to the same rules. Annotations and
constraints such as ``minLength`` are not compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from driftloop.contracts.export import schema_documents

Schema = dict[str, Any]
Direction = Literal["backward", "forward"]

_ANY = "any"

#: Why a difference between writer and reader breaks reading, worded for the direction it was found in.
_REASONS: dict[str, dict[Direction, str]] = {
    "writer_only": {
        "backward": "property removed, and the current model rejects unknown fields",
        "forward": "new property, which consumers of the committed schema reject as unknown",
    },
    "reader_only": {
        "backward": "new required property",
        "forward": "property removed: consumers of the committed schema still expect it",
    },
    "became_required": {
        "backward": "optional property became required",
        "forward": "required property became optional: consumers of the committed schema require it",
    },
}


@dataclass(frozen=True)
class Incompatibility:
    schema: str
    path: str
    reason: str
    direction: Direction = "backward"

    def __str__(self) -> str:
        return f"{self.schema}: {self.path or '<payload>'}: {self.reason} ({self.direction})"


def check_directory(committed_dir: Path) -> list[Incompatibility]:
    """Compare every committed ``schemas/*.json`` with what the models produce now, both ways."""
    current = schema_documents()
    problems: list[Incompatibility] = []
    for path in sorted((committed_dir / "schemas").glob("*.json")):
        old = json.loads(path.read_text(encoding="utf-8"))
        if path.name in current:
            problems += compare_schemas(path.name, old, current[path.name])
        else:
            problems.append(Incompatibility(path.name, "", "schema removed: its records can't be read"))
    return problems


def compare_schemas(name: str, old: Schema, new: Schema) -> list[Incompatibility]:
    """Everything that stops ``new`` reading records of ``old`` (backward) or the reverse (forward)."""
    return reading(name, writer=old, reader=new, direction="backward") + reading(
        name, writer=new, reader=old, direction="forward"
    )


def reading(name: str, *, writer: Schema, reader: Schema, direction: Direction) -> list[Incompatibility]:
    """Everything that makes a record written under ``writer`` unreadable under ``reader``."""
    return _Comparison(name, writer, reader, direction).node("", writer, reader)


class _Comparison:
    """Holds both root documents, because a ``$ref`` is resolved against the document it appears in."""

    def __init__(self, name: str, writer_root: Schema, reader_root: Schema, direction: Direction) -> None:
        self.name, self.writer_root, self.reader_root = name, writer_root, reader_root
        self.direction = direction
        #: Pairs of object schemas under comparison; recursive models would otherwise never finish.
        self.visiting: set[tuple[int, int]] = set()

    def problem(self, path: str, reason: str) -> list[Incompatibility]:
        return [Incompatibility(self.name, path, reason, self.direction)]

    def node(self, path: str, writer: Schema, reader: Schema) -> list[Incompatibility]:
        """Each alternative the writer may produce must be accepted by some alternative of the reader."""
        reader_alternatives = _alternatives(self.reader_root, reader)
        lost: list[str] = []
        problems: list[Incompatibility] = []
        for kind, writer_alt in _alternatives(self.writer_root, writer):
            candidates = [alt for reader_kind, alt in reader_alternatives if _accepts(reader_kind, kind)]
            if not candidates:
                lost.append(kind)
                continue
            fewest: list[Incompatibility] = min(
                (self.same_kind(path, kind, writer_alt, alt) for alt in candidates), key=len
            )
            problems += fewest
        if lost:
            now = "|".join(sorted({kind for kind, _ in reader_alternatives}))
            problems += self.problem(path, f"type changed: {'|'.join(lost)} not accepted by {now}")
        return problems

    def same_kind(self, path: str, kind: str, writer: Schema, reader: Schema) -> list[Incompatibility]:
        problems = self.values(path, writer, reader)
        if kind == "object":
            problems += self.object(path, writer, reader)
        elif kind == "array":
            problems += self.node(f"{path}[]", writer.get("items", {}), reader.get("items", {}))
        return problems

    def values(self, path: str, writer: Schema, reader: Schema) -> list[Incompatibility]:
        """``enum`` and ``const`` as one value set: the reader must keep every value the writer may write."""
        reader_values = _allowed_values(reader)
        if reader_values is None:
            return []
        writer_values = _allowed_values(writer)
        if writer_values is None:
            return self.problem(path, f"values restricted to {sorted(reader_values)}")
        if dropped := writer_values - reader_values:
            return self.problem(path, f"values not accepted: {sorted(dropped)}")
        return []

    def object(self, path: str, writer: Schema, reader: Schema) -> list[Incompatibility]:
        key = (id(writer), id(reader))
        if key in self.visiting:
            return []
        self.visiting.add(key)
        problems = self.properties(path, writer, reader) + self.additional(path, writer, reader)
        self.visiting.discard(key)
        return problems

    def properties(self, path: str, writer: Schema, reader: Schema) -> list[Incompatibility]:
        writer_props, reader_props = writer.get("properties", {}), reader.get("properties", {})
        writer_required, reader_required = set(writer.get("required", [])), set(reader.get("required", []))
        reader_extra = reader.get("additionalProperties", True)
        problems: list[Incompatibility] = []
        for prop, writer_schema in writer_props.items():
            prop_path = _join(path, prop)
            if prop in reader_props:
                problems += self.node(prop_path, writer_schema, reader_props[prop])
            elif reader_extra is False:
                problems += self.problem(prop_path, self.reason("writer_only"))
            elif reader_extra is not True:
                problems += self.node(prop_path, writer_schema, reader_extra)
        for prop in sorted(set(reader_props) - set(writer_props)):
            if prop in reader_required or self.direction == "forward":
                problems += self.problem(_join(path, prop), self.reason("reader_only"))
        for prop in sorted((reader_required & set(writer_props)) - writer_required):
            problems += self.problem(_join(path, prop), self.reason("became_required"))
        return problems

    def reason(self, kind: str) -> str:
        return _REASONS[kind][self.direction]

    def additional(self, path: str, writer: Schema, reader: Schema) -> list[Incompatibility]:
        """Keys beyond the declared properties: only dict-typed fields (``features``) write them.

        A model's record holds its declared properties only, so its own
        ``additionalProperties`` (absent, or ``false``) says what it reads, not
        what it writes.
        """
        writer_extra = writer.get("additionalProperties", "properties" not in writer)
        reader_extra = reader.get("additionalProperties", True)
        if writer_extra is False or reader_extra is True:
            return []
        if reader_extra is False:
            return self.problem(path, "additional properties not accepted")
        return self.node(_join(path, "*"), {} if writer_extra is True else writer_extra, reader_extra)


def _alternatives(root: Schema, schema: Schema) -> list[tuple[str, Schema]]:
    """A schema as (JSON type, schema) pairs, flattening ``anyOf``/``oneOf`` and ``type`` lists."""
    schema = _resolve(root, schema)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return [alternative for branch in branches for alternative in _alternatives(root, branch)]
    return [(kind, schema) for kind in _kinds(schema)]


def _kinds(schema: Schema) -> list[str]:
    declared = schema.get("type")
    if isinstance(declared, list):
        return declared
    if declared:
        return [declared]
    values = _allowed_values(schema)
    return sorted({_json_kind(json.loads(value)) for value in values}) if values else [_ANY]


def _resolve(root: Schema, schema: Schema) -> Schema:
    """Follow local ``$ref`` pointers; sibling keywords of a ``$ref`` are annotations and are dropped."""
    while "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        schema = target
    return schema


def _accepts(new_kind: str, old_kind: str) -> bool:
    return new_kind in (old_kind, _ANY) or (new_kind, old_kind) == ("number", "integer")


def _allowed_values(schema: Schema) -> set[str] | None:
    """Values as canonical JSON text, so ``1``, ``1.0`` and ``true`` stay distinct and lists are hashable."""
    if "const" in schema:
        return {json.dumps(schema["const"], sort_keys=True)}
    if "enum" in schema:
        return {json.dumps(value, sort_keys=True) for value in schema["enum"]}
    return None


def _json_kind(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else kinds[type(value)]


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part
