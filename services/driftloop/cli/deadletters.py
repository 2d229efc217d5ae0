"""``driftloop deadletters``: see what was rejected and why, and send fixed records back to their topics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from driftloop.bus import Bus
from driftloop.bus.deadletters import LetterFilter, read_letters, replay_letters, replayable
from driftloop.contracts import DeadLetter
from driftloop.settings import DriftloopSettings

deadletters_app = typer.Typer(help="The dead-letter topic: list rejected records, replay them once fixed.")

Topic = Annotated[str | None, typer.Option(help="Only letters whose record came from this topic.")]
Reason = Annotated[str | None, typer.Option(help="Only letters whose reason contains this text (any case).")]
Since = Annotated[datetime | None, typer.Option(help="Only letters written at or after this time (UTC if no zone).")]
Until = Annotated[datetime | None, typer.Option(help="Only letters written before this time (UTC if no zone).")]


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _letters(topic: str | None, reason: str | None, since: datetime | None, until: datetime | None) -> list[DeadLetter]:
    wanted = LetterFilter(topic=topic, reason=reason, since=_utc(since), until=_utc(until))
    return asyncio.run(read_letters(DriftloopSettings(), wanted))


@deadletters_app.command("list")
def list_letters(topic: Topic = None, reason: Reason = None, since: Since = None, until: Until = None) -> None:
    """Show the dead letters that match, oldest first within each partition of the topic."""
    letters = _letters(topic, reason, since, until)
    table = Table(title=f"dead letters ({len(letters)})")
    for column in ("time", "stage", "source", "key", "event id", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(
            letter.occurred_at.strftime("%Y-%m-%d %H:%M:%S"),
            letter.stage,
            f"{letter.source_topic}[{letter.partition}]@{letter.offset}",
            letter.key or "",
            letter.original_event_id or "",
            letter.reason if replayable(letter) else f"{letter.reason} (payload truncated: not replayable)",
        )
    # Made when the command runs, so the table is as wide as the terminal (or COLUMNS) is then.
    Console().print(table)


@deadletters_app.command("replay")
def replay(topic: Topic = None, reason: Reason = None, since: Since = None, until: Until = None) -> None:
    """Re-publish the matching letters' records to their source topics, with their keys and headers.

    Consumers skip an event id they have handled, so replaying a record that
    got through after all is harmless.
    """
    letters = _letters(topic, reason, since, until)

    async def send() -> int:
        bus = Bus(DriftloopSettings(), "cli")
        await bus.start()
        try:
            return await replay_letters(bus, letters)
        finally:
            await bus.stop()

    replayed = asyncio.run(send()) if letters else 0
    skipped = len(letters) - replayed
    note = f" ({skipped} truncated, left alone)" if skipped else ""
    Console().print(f"replayed {replayed} of {len(letters)} dead letters{note}")


def register(app: typer.Typer) -> None:
    app.add_typer(deadletters_app, name="deadletters")
