"""Generate the wire contracts other teams read: one JSON Schema per payload and an AsyncAPI document.

The files are committed under ``contracts/`` so a consumer in any language (and the
compatibility check in ``driftloop.contracts.compat``) can use them without Python.
They are derived from the models and the topic catalog only, and written byte for
byte the same on every run, so a diff in review is always a real contract change.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from driftloop.contracts.catalog import TOPICS, TopicSpec, payload_types
from driftloop.contracts.envelope import Contract, Envelope

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
HEADERS_SCHEMA = "CloudEventHeaders"
_SCHEMA_REF = "#/components/schemas/{model}"

_DESCRIPTION = (
    "Every Kafka topic of driftloop and the payloads it carries. Payloads are JSON; the "
    "envelope travels as CloudEvents binary-mode Kafka headers (ce_*), plus correlation_id and "
    "causation_id so one turn of the loop can be followed across topics."
)


def schema_documents() -> dict[str, dict[str, Any]]:
    """One standalone JSON Schema per payload type, keyed by its file name ``<EVENT_TYPE>.json``."""
    return {f"{payload.EVENT_TYPE}.json": _schema_document(payload) for payload in payload_types()}


def _schema_document(payload: type[Contract]) -> dict[str, Any]:
    """Named by event type rather than class name, because the event type is the public, versioned name."""
    schema = payload.model_json_schema()
    return {**schema, "$schema": JSON_SCHEMA_DIALECT, "$id": payload.EVENT_TYPE, "title": payload.EVENT_TYPE}


def asyncapi_document() -> dict[str, Any]:
    """The whole catalog as AsyncAPI 3.0, self-contained so tools need no other file to resolve it."""
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": "driftloop", "version": _package_version(), "description": _DESCRIPTION},
        "defaultContentType": "application/json",
        "channels": {_channel_id(spec): _channel(spec) for spec in TOPICS.values()},
        "operations": {f"receive_{_channel_id(spec)}": _operation(spec) for spec in TOPICS.values()},
        "components": {"schemas": _component_schemas(), "messages": _messages()},
    }


def export_contracts(out_dir: Path) -> list[Path]:
    """Write the contracts, dropping schemas of payloads that are gone so the folder mirrors the code."""
    schema_dir = out_dir / "schemas"
    schema_dir.mkdir(parents=True, exist_ok=True)
    documents = schema_documents()
    written = [_write(schema_dir / name, _json_text(doc)) for name, doc in documents.items()]
    for stale in schema_dir.glob("*.json"):
        if stale.name not in documents:
            stale.unlink()
    written.append(_write(out_dir / "asyncapi.yaml", yaml.safe_dump(asyncapi_document(), sort_keys=False)))
    return written


def _json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _write(path: Path, text: str) -> Path:
    """Fixed encoding and line endings, so the bytes do not depend on the platform."""
    path.write_text(text, encoding="utf-8", newline="\n")
    return path


def _package_version() -> str:
    try:
        return version("driftloop")
    except PackageNotFoundError:
        return "0.1.0"


def _channel_id(spec: TopicSpec) -> str:
    """Topic names contain dots, which code generators turn into awkward identifiers."""
    return spec.name.replace(".", "_")


def _channel(spec: TopicSpec) -> dict[str, Any]:
    kafka: dict[str, Any] = {"partitions": spec.partitions}
    if spec.config:
        kafka["topicConfiguration"] = {key: _config_value(value) for key, value in spec.config.items()}
    kafka["bindingVersion"] = KAFKA_BINDING_VERSION
    return {
        "address": spec.name,
        "description": spec.description,
        "messages": {p.__name__: {"$ref": f"#/components/messages/{p.__name__}"} for p in spec.payloads},
        "bindings": {"kafka": kafka},
    }


def _config_value(value: str) -> int | str:
    """The Kafka binding types numeric settings (``retention.ms``) as integers; the catalog keeps strings."""
    return int(value) if value.lstrip("-").isdigit() else value


def _operation(spec: TopicSpec) -> dict[str, Any]:
    """AsyncAPI 3 requires an operation's messages to be the channel's own, hence refs through the channel."""
    channel = f"#/channels/{_channel_id(spec)}"
    return {
        "action": "receive",
        "channel": {"$ref": channel},
        "summary": f"Consume {spec.name}.",
        "messages": [{"$ref": f"{channel}/messages/{payload.__name__}"} for payload in spec.payloads],
    }


def _messages() -> dict[str, Any]:
    pairs = [(payload, spec) for spec in TOPICS.values() for payload in spec.payloads]
    return {payload.__name__: _message(payload, spec) for payload, spec in pairs}


def _message(payload: type[Contract], spec: TopicSpec) -> dict[str, Any]:
    """Headers pin ``ce_type`` per message so a consumer can route on headers without parsing the payload."""
    specific: dict[str, Any] = {"properties": {"ce_type": {"const": payload.EVENT_TYPE}}}
    message: dict[str, Any] = {
        "name": payload.__name__,
        "title": payload.EVENT_TYPE,
        "contentType": "application/json",
        "headers": {"allOf": [{"$ref": _SCHEMA_REF.format(model=HEADERS_SCHEMA)}, specific]},
        "payload": {"$ref": _SCHEMA_REF.format(model=payload.__name__)},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": f"The record key: {spec.key}."},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    if issubclass(payload, Envelope):
        specific["required"] = ["correlation_id"]
        message["correlationId"] = {
            "description": "Shared by every event of one turn of the loop.",
            "location": "$message.header#/correlation_id",
        }
    return message


def _component_schemas() -> dict[str, Any]:
    """Payloads plus the nested models pydantic puts in ``$defs``, all hoisted to one flat namespace."""
    schemas: dict[str, Any] = {HEADERS_SCHEMA: _headers_schema()}
    for payload in payload_types():
        schema = payload.model_json_schema(ref_template=_SCHEMA_REF)
        for name, nested in schema.pop("$defs", {}).items():
            _add_schema(schemas, name, nested)
        _add_schema(schemas, payload.__name__, schema)
    return schemas


def _add_schema(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    """Two different models with one class name would silently shadow each other in a flat namespace."""
    if schemas.setdefault(name, schema) != schema:
        raise ValueError(f"two different schemas are both named {name!r}")


def _headers_schema() -> dict[str, Any]:
    """What ``driftloop.bus.producer.cloudevent_headers`` writes, as strings (Kafka headers are bytes)."""
    text = {"type": "string"}
    return {
        "type": "object",
        "description": "CloudEvents 1.0 Kafka protocol binding, binary mode, plus driftloop lineage.",
        "properties": {
            "ce_specversion": {"const": "1.0", "type": "string"},
            "ce_id": {**text, "description": "The event id; consumers deduplicate on it."},
            "ce_source": {**text, "description": "The service that produced the record."},
            "ce_type": {**text, "description": "The event type, e.g. io.driftloop.drift.detected.v1."},
            "ce_time": {**text, "format": "date-time"},
            "ce_subject": {**text, "description": "What the event is about, e.g. the model name."},
            "content-type": {"const": "application/json", "type": "string"},
            "correlation_id": {**text, "description": "Shared by every event of one turn of the loop."},
            "causation_id": {**text, "description": "The event id of the event that caused this one."},
        },
        "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"],
    }
