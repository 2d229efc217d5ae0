"""Ops verbs over the services' REST APIs, for people at a terminal and for scripts.

They send ``DRIFTLOOP_TOKEN``, or the local admin token ``driftloop up`` left under ``DRIFTLOOP_HOME``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from driftloop.cli.governance import cli_token
from driftloop.settings import DriftloopSettings

console = Console()

RegistryUrl = Annotated[str, typer.Option(envvar="DRIFTLOOP_REGISTRY_URL", help="Registry base URL.")]
TrainingUrl = Annotated[str, typer.Option(envvar="DRIFTLOOP_TRAINING_URL", help="Training base URL.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON.")]


def _call(method: str, url: str, **kwargs: Any) -> Any:
    token = cli_token(DriftloopSettings())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url, timeout=30.0, headers=headers, **kwargs)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach {url}[/]: {exc}")
        raise typer.Exit(2) from exc
    if response.status_code >= 400:
        console.print(f"[red]{response.status_code}[/] {response.text}")
        raise typer.Exit(1)
    return response.json() if response.content else None


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    return table


def models(registry: RegistryUrl = "http://127.0.0.1:8004", name: str | None = None, as_json: AsJson = False) -> None:
    """List models, or one model's versions."""
    if name:
        rows = _call("GET", f"{registry}/v1/models/{name}/versions")
        columns = ["version", "status", "aliases", "run_id", "metrics", "created_at"]
    else:
        rows = _call("GET", f"{registry}/v1/models")
        columns = ["name", "champion", "latest_version", "versions"]
    console.print_json(json.dumps(rows)) if as_json else console.print(_table("models", rows, columns))


def promote(
    name: str, version: int, registry: RegistryUrl = "http://127.0.0.1:8004", reason: str = "manual promotion"
) -> None:
    """Make VERSION the champion of NAME (recorded in the audit log)."""
    result = _call("POST", f"{registry}/v1/models/{name}/versions/{version}/promote", json={"reason": reason})
    console.print(f"[green]{name} v{result['version']} is champion[/]")


def rollback(name: str, registry: RegistryUrl = "http://127.0.0.1:8004", reason: str = "manual rollback") -> None:
    """Give NAME's champion alias back to the previous champion; again, one more step back."""
    result = _call("POST", f"{registry}/v1/models/{name}/rollback", json={"reason": reason})
    console.print(f"[yellow]{name} rolled back to v{result['version']}[/]")


def runs(training: TrainingUrl = "http://127.0.0.1:8003", as_json: AsJson = False) -> None:
    """List training runs, newest first."""
    rows = _call("GET", f"{training}/v1/runs")
    columns = ["run_id", "model_name", "status", "trigger", "metrics", "started_at"]
    console.print_json(json.dumps(rows)) if as_json else console.print(_table("training runs", rows, columns))


def retrain(name: str, training: TrainingUrl = "http://127.0.0.1:8003") -> None:
    """Ask for a training run of NAME now."""
    result = _call("POST", f"{training}/v1/models/{name}/retrain", json={})
    console.print(f"retrain requested: {result['request_id']}")


def pin(name: str, registry: RegistryUrl = "http://127.0.0.1:8004", reason: str = "") -> None:
    """Keep NAME's champion: drift-triggered challengers are refused until it is unpinned."""
    result = _call("POST", f"{registry}/v1/models/{name}/pin", json={"reason": reason})
    console.print(f"[green]{name} v{result['version']} pinned[/]")


def unpin(name: str, registry: RegistryUrl = "http://127.0.0.1:8004", reason: str = "") -> None:
    """Let the gate replace NAME's champion again."""
    _call("POST", f"{registry}/v1/models/{name}/unpin", json={"reason": reason})
    console.print(f"{name} unpinned")


Reason = Annotated[str, typer.Option(help="Why: kept in the audit log beside your token's name.")]


def approve(name: str, version: int, reason: Reason, registry: RegistryUrl = "http://127.0.0.1:8004") -> None:
    """Approve VERSION of NAME, waiting since it passed the gate: it becomes champion (approver role)."""
    result = _call("POST", f"{registry}/v1/models/{name}/versions/{version}/approve", json={"reason": reason})
    console.print(f"[green]{name} v{result['version']} approved and champion[/]")


def reject(name: str, version: int, reason: Reason, registry: RegistryUrl = "http://127.0.0.1:8004") -> None:
    """Reject VERSION of NAME, waiting since it passed the gate (approver role)."""
    result = _call("POST", f"{registry}/v1/models/{name}/versions/{version}/reject", json={"reason": reason})
    console.print(f"[yellow]{name} v{result['version']} rejected[/]")


def approvals(registry: RegistryUrl = "http://127.0.0.1:8004", as_json: AsJson = False) -> None:
    """List the versions waiting for an approver."""
    rows = _call("GET", f"{registry}/v1/approvals")
    columns = ["model_name", "version", "semver", "awaiting_since", "due_at", "escalated_at"]
    console.print_json(json.dumps(rows)) if as_json else console.print(_table("pending approvals", rows, columns))


def register(app: typer.Typer) -> None:
    for command in (models, promote, rollback, pin, unpin, approve, reject, approvals, runs, retrain):
        app.command()(command)
