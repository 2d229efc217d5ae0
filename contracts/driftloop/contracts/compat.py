"""Backward-compatibility check of the current payload schemas against the committed ones.

Consumers upgrade after producers, and topics are replayed from the start, so a
consumer built from the current models must still read every record written with
an older schema (Confluent's BACKWARD rule). Payloads forbid unknown fields, so a
removed property breaks old records just as a narrowed type or a new required
property does. A change that breaks this belongs in a new, versioned event type.

Only what decides whether old data still validates is compared: property sets,
``required``, JSON types (integer counts as a number), ``enum``/``const`` values and
additional properties, following ``$ref`` into the document's own ``$defs`` so
nested models are held to the same rules. Annotations and constraints such as
``minLength`` are not compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftloop.contracts.export import schema_documents

Schema = dict[str, Any]

_ANY = "any"


@dataclass(frozen=True)
class Incompatibility:
    schema: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.schema}: {self.path or '<payload>'}: {self.reason}"


def check_directory(committed_dir: Path) -> list[Incompatibility]:
    """Compare every committed ``schemas/*.json`` with what the models produce now."""
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
    """Everything that makes a record valid under ``old`` invalid under ``new``."""
    return _Comparison(name, old, new).node("", old, new)


class _Comparison:
    """Holds both root documents, because a ``$ref`` is resolved against the document it appears in."""

    def __init__(self, name: str, old_root: Schema, new_root: Schema) -> None:
        self.name, self.old_root, self.new_root = name, old_root, new_root
        #: Pairs of object schemas under comparison; recursive models would otherwise never finish.
        self.visiting: set[tuple[int, int]] = set()

    def problem(self, path: str, reason: str) -> list[Incompatibility]:
        return [Incompatibility(self.name, path, reason)]

    def node(self, path: str, old: Schema, new: Schema) -> list[Incompatibility]:
        """Each alternative old allowed must be accepted by some alternative of new."""
        new_alternatives = _alternatives(self.new_root, new)
        lost: list[str] = []
        problems: list[Incompatibility] = []
        for kind, old_alt in _alternatives(self.old_root, old):
            candidates = [alt for new_kind, alt in new_alternatives if _accepts(new_kind, kind)]
            if not candidates:
                lost.append(kind)
                continue
            fewest: list[Incompatibility] = min(
                (self.same_kind(path, kind, old_alt, alt) for alt in candidates), key=len
            )
            problems += fewest
        if lost:
            now = "|".join(sorted({kind for kind, _ in new_alternatives}))
            problems += self.problem(path, f"type changed: {'|'.join(lost)} no longer accepted (now {now})")
        return problems

    def same_kind(self, path: str, kind: str, old: Schema, new: Schema) -> list[Incompatibility]:
        problems = self.values(path, old, new)
        if kind == "object":
            problems += self.object(path, old, new)
        elif kind == "array":
            problems += self.node(f"{path}[]", old.get("items", {}), new.get("items", {}))
        return problems

    def values(self, path: str, old: Schema, new: Schema) -> list[Incompatibility]:
        """``enum`` and ``const`` as one value set: new must keep every value old allowed."""
        new_values = _allowed_values(new)
        if new_values is None:
            return []
        old_values = _allowed_values(old)
        if old_values is None:
            return self.problem(path, f"values restricted to {sorted(new_values)}")
        if dropped := old_values - new_values:
            return self.problem(path, f"values no longer allowed: {sorted(dropped)}")
        return []

    def object(self, path: str, old: Schema, new: Schema) -> list[Incompatibility]:
        key = (id(old), id(new))
        if key in self.visiting:
            return []
        self.visiting.add(key)
        problems = self.properties(path, old, new) + self.additional(path, old, new)
        self.visiting.discard(key)
        return problems

    def properties(self, path: str, old: Schema, new: Schema) -> list[Incompatibility]:
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        problems: list[Incompatibility] = []
        for prop, old_schema in old_props.items():
            prop_path = _join(path, prop)
            if prop in new_props:
                problems += self.node(prop_path, old_schema, new_props[prop])
            else:
                problems += self.problem(prop_path, "property removed")
        for prop in sorted(set(new.get("required", [])) - set(old.get("required", []))):
            reason = "optional property became required" if prop in old_props else "new required property"
            problems += self.problem(_join(path, prop), reason)
        return problems

    def additional(self, path: str, old: Schema, new: Schema) -> list[Incompatibility]:
        """Dict-typed fields (``features``) are objects whose values are all checked against one schema."""
        old_extra, new_extra = old.get("additionalProperties", True), new.get("additionalProperties", True)
        if old_extra is False or new_extra is True:
            return []
        if new_extra is False:
            return self.problem(path, "additional properties no longer allowed")
        return self.node(_join(path, "*"), {} if old_extra is True else old_extra, new_extra)


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
