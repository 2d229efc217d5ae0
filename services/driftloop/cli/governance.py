"""``driftloop token`` and ``driftloop audit``: who may call the services, and whether the audit log still holds.

Both work on the metadata database directly (``DRIFTLOOP_DATABASE_URL``, or
the SQLite file under ``DRIFTLOOP_HOME``): issuing the first token cannot
need a token, and checking the audit must not trust the registry it checks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from driftloop.auth import Role
from driftloop.db import TokenStore, make_engine
from driftloop.services.registry.store import Registry, create_tables
from driftloop.settings import DriftloopSettings

token_app = typer.Typer(help="API tokens: create (shown once, stored hashed), list, revoke.")
audit_app = typer.Typer(help="The registry's hash-chained audit log.")
console = Console()

#: Name of the token ``driftloop up`` and ``driftloop demo`` make for the person at the terminal.
LOCAL_ADMIN = "local-admin"


def token_file(settings: DriftloopSettings) -> Path:
    return settings.home / "admin.token"


def local_admin_token(settings: DriftloopSettings) -> str:
    """The local admin token under ``DRIFTLOOP_HOME``, made (and stored 0600) when there is none that works.

    A file whose token the database no longer knows (a fresh database, a
    revocation) is replaced, so ``up`` and ``demo`` never need set-up.
    """
    path = token_file(settings)
    engine = make_engine(settings.db_url)
    try:
        store = TokenStore(engine)
        if path.exists() and store.identify(path.read_text().strip()) is not None:
            return path.read_text().strip()
        token = store.issue(LOCAL_ADMIN, Role.admin)
    finally:
        engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(token + "\n")
    path.chmod(0o600)
    return token


def cli_token(settings: DriftloopSettings) -> str | None:
    """The token the ops verbs send: ``DRIFTLOOP_TOKEN``, else the local admin token if ``up`` made one."""
    if token := os.environ.get("DRIFTLOOP_TOKEN"):
        return token
    path = token_file(settings)
    return path.read_text().strip() if path.exists() else None


def session_token(settings: DriftloopSettings) -> str:
    """What ``demo`` calls the services with: ``DRIFTLOOP_TOKEN`` if set, else the local admin token."""
    return os.environ.get("DRIFTLOOP_TOKEN") or local_admin_token(settings)


@token_app.command("create")
def create(
    role: Annotated[Role, typer.Option(help="viewer < operator < approver < admin; producer writes data only.")],
    name: Annotated[str, typer.Option(help="Who holds it: the audit's actor for its changes.")],
) -> None:
    """Print a new token once; only its SHA-256 is stored."""
    engine = make_engine(DriftloopSettings().db_url)
    try:
        token = TokenStore(engine).issue(name, role)
    finally:
        engine.dispose()
    typer.echo(token)


@token_app.command("list")
def list_tokens() -> None:
    """Every token's id, name, role and state (never the token)."""
    engine = make_engine(DriftloopSettings().db_url)
    try:
        rows = TokenStore(engine).tokens()
    finally:
        engine.dispose()
    table = Table(title="API tokens")
    for column in ("id", "name", "role", "created", "revoked"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.token_id, row.name, row.role, str(row.created_at), str(row.revoked_at or ""))
    console.print(table)


@token_app.command("revoke")
def revoke(token_id: Annotated[str, typer.Argument(help="The id `token list` shows.")]) -> None:
    """Revoke a token; services stop accepting it within DRIFTLOOP_TOKEN_CACHE_SECONDS."""
    engine = make_engine(DriftloopSettings().db_url)
    try:
        done = TokenStore(engine).revoke(token_id)
    finally:
        engine.dispose()
    if not done:
        console.print(f"[red]no live token {token_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {token_id}")


@audit_app.command("verify")
def verify() -> None:
    """Check every audit row's hash and link; name the first broken row and exit 1 if any."""
    engine = make_engine(DriftloopSettings().db_url)
    try:
        create_tables(engine)
        report = Registry(engine).verify_audit()
    finally:
        engine.dispose()
    if not report.intact:
        where = f"row {report.broken_at}" if report.broken_at else "the end of the log"
        console.print(f"[red]audit chain broken at {where}[/]: {report.problem}")
        raise typer.Exit(1)
    unchained = f" ({report.unchained} rows from before the chain, unchecked)" if report.unchained else ""
    console.print(f"[green]audit chain intact[/]: {report.checked} rows{unchained}")


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.add_typer(audit_app, name="audit")
