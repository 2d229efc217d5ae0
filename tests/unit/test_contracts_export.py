"""The committed contracts are what the models produce, and the AsyncAPI document stands on its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftloop.contracts import TOPICS, payload_types
from driftloop.contracts.export import asyncapi_document, export_contracts, schema_documents

COMMITTED = Path(__file__).parents[2] / "contracts"
STALE = "contracts/ is out of date with the models: run `driftloop contracts export` and commit the result"


def _files(root: Path) -> dict[str, bytes]:
    paths = [root / "asyncapi.yaml", *sorted((root / "schemas").glob("*.json"))]
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in paths if path.exists()}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    target: Any = document
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def test_committed_contracts_match_the_models(tmp_path: Path) -> None:
    export_contracts(tmp_path)
    fresh, committed = _files(tmp_path), _files(COMMITTED)
    assert sorted(committed) == sorted(fresh), STALE
    for name, content in fresh.items():
        assert committed[name] == content, f"{name}: {STALE}"


def test_export_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert [p.relative_to(first) for p in export_contracts(first)] == [
        p.relative_to(second) for p in export_contracts(second)
    ]
    assert _files(first) == _files(second)
    export_contracts(first)
    assert _files(first) == _files(second)


def test_export_removes_schemas_of_payloads_that_are_gone(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    stale = tmp_path / "schemas" / "io.driftloop.retired.v1.json"
    stale.write_text("{}\n")
    written = export_contracts(tmp_path)
    assert not stale.exists()
    assert {p.name for p in written} == {*schema_documents(), "asyncapi.yaml"}


def test_one_schema_per_payload_named_by_event_type() -> None:
    documents = schema_documents()
    assert list(documents) == [f"{p.EVENT_TYPE}.json" for p in payload_types()]
    for name, document in documents.items():
        event_type = name.removesuffix(".json")
        assert document["$id"] == document["title"] == event_type
        assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        for ref in _refs(document):
            _resolve(document, ref)


def test_asyncapi_version_and_one_channel_per_topic() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    addresses = [channel["address"] for channel in document["channels"].values()]
    assert sorted(addresses) == sorted(TOPICS)
    for channel in document["channels"].values():
        spec = TOPICS[channel["address"]]
        assert channel["bindings"]["kafka"]["partitions"] == spec.partitions
        assert sorted(channel["messages"]) == sorted(p.__name__ for p in spec.payloads)


def test_every_payload_has_a_message_with_headers_and_a_schema() -> None:
    components = asyncapi_document()["components"]
    for payload in payload_types():
        message = components["messages"][payload.__name__]
        assert message["contentType"] == "application/json"
        assert message["payload"] == {"$ref": f"#/components/schemas/{payload.__name__}"}
        assert message["headers"]["allOf"][1]["properties"]["ce_type"]["const"] == payload.EVENT_TYPE
    headers = components["schemas"]["CloudEventHeaders"]["properties"]
    for name in ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject"):
        assert name in headers
    assert {"correlation_id", "causation_id"} <= set(headers)


@pytest.mark.parametrize("source", ["built", "committed"])
def test_every_ref_in_the_asyncapi_document_resolves(source: str) -> None:
    if source == "built":
        document = asyncapi_document()
    else:
        document = yaml.safe_load((COMMITTED / "asyncapi.yaml").read_text(encoding="utf-8"))
    refs = set(_refs(document))
    assert "#/components/schemas/DataWindow" in refs, "nested models should be hoisted from $defs"
    for ref in refs:
        _resolve(document, ref)
    assert "$defs" not in repr(document)


def test_asyncapi_yaml_has_no_anchors() -> None:
    """Shared objects would be written as YAML anchors, which many AsyncAPI tools handle badly."""
    text = yaml.safe_dump(asyncapi_document(), sort_keys=False)
    assert "&id" not in text
