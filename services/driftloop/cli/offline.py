"""``driftloop offline``: maintenance of the offline store."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from driftloop.artifacts import open_store
from driftloop.config import load_config
from driftloop.offline import OfflineStore, legacy_views, view_feature_types
from driftloop.settings import DriftloopSettings

offline_app = typer.Typer(help="The offline store: Parquet datasets of feature vectors and labels.")
console = Console()


@offline_app.command("migrate")
def migrate(
    view: Annotated[
        list[str] | None, typer.Option(help="Feature view to migrate (repeatable); default: every view found.")
    ] = None,
) -> None:
    """Rewrite the JSON-lines segments of the old layout (datasets/…) as Parquet (offline/…); safe to run again."""
    settings = DriftloopSettings()
    config = load_config(settings.config)
    store = open_store(settings)
    declared = {v.name for v in config.feature_views}
    for name in view or legacy_views(store):
        types = view_feature_types(config, name) if name in declared else None
        report = OfflineStore(store, name, types).migrate_legacy()
        console.print(f"{name}: {report.segments} segments, {report.rows} rows rewritten as Parquet")


def register(app: typer.Typer) -> None:
    app.add_typer(offline_app, name="offline")
