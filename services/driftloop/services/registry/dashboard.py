"""A read-only HTML page for people: each model's champion, its versions with their gate decisions, the audit log.

Server-rendered from the same store the API reads, so it needs no build step
and shows exactly what ``GET /v1/models`` and ``GET /v1/audit`` would.
"""

from __future__ import annotations

from html import escape
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from driftloop.http import READ
from driftloop.services.registry.store import AuditEntry, ModelVersion, Registry

router = APIRouter(tags=["dashboard"], dependencies=[READ])

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:0.3rem 0.6rem;text-align:left;font-size:0.9rem}
th{background:#f4f4f4}.champion{background:#e8f6e8}.rejected{color:#999}
"""


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def _table(headers: list[str], rows: list[tuple[str, list[str]]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{css}">' + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>" for css, cells in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _version_row(version: ModelVersion) -> tuple[str, list[str]]:
    gate = (version.gate or {}).get("reason", "")
    accuracy = version.metrics.get("accuracy")
    return version.status, [
        f"v{version.version}",
        version.status,
        "-" if accuracy is None else f"{accuracy:.3f}",
        gate,
        "-" if version.parent_version is None else f"v{version.parent_version}",
        version.run_id,
        version.created_at.isoformat(timespec="seconds"),
    ]


def _audit_row(entry: AuditEntry) -> tuple[str, list[str]]:
    return "", [
        entry.at.isoformat(timespec="seconds"),
        entry.model_name,
        entry.action,
        "-" if entry.version is None else f"v{entry.version}",
        "-" if entry.previous_version is None else f"v{entry.previous_version}",
        entry.actor,
        entry.reason,
        entry.correlation_id or "",
    ]


@router.get("/", response_class=HTMLResponse)
async def dashboard(registry: Annotated[Registry, Depends(get_registry)]) -> str:
    sections = []
    for name in registry.models():
        champion = registry.aliases(name).get("champion")
        versions = registry.versions(name)
        heading = f"<h2>{escape(name)} — champion {'v' + str(champion) if champion else 'none'}</h2>"
        headers = ["version", "status", "accuracy", "gate", "parent", "run", "created"]
        sections.append(heading + _table(headers, [_version_row(v) for v in reversed(versions)]))
    audit = _table(
        ["at", "model", "action", "version", "previous", "actor", "reason", "correlation id"],
        [_audit_row(e) for e in registry.audit(limit=50)],
    )
    body = "".join(sections) or "<p>No model versions yet.</p>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>driftloop registry</title>"
        f"<meta http-equiv='refresh' content='5'><style>{STYLE}</style></head>"
        f"<body><h1>driftloop registry</h1>{body}<h2>Audit log</h2>{audit}</body></html>"
    )
