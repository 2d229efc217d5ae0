"""The metadata database (SQLite by default, PostgreSQL in production) and the transactional outbox.

A handler that changes the database and must tell the world writes the event
into ``outbox`` in the same transaction; the relay publishes it afterwards.
So a crash can repeat an event (consumers dedupe by ``event_id``) but can
never commit a change whose event is lost, nor announce a change that was
rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from driftloop.bus.producer import Bus, cloudevent_headers
from driftloop.contracts import Contract, topic_for, utcnow
from driftloop.logging import get_logger

log = get_logger(__name__)


def aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; every time driftloop stores is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the registry and training processes share one file without blocking readers.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def create_tables(engine: Engine, models: list[type[SQLModel]]) -> None:
    """Create missing tables; two services sharing one database may race here, so retry once."""
    tables = [m.__table__ for m in (*models, OutboxRecord)]  # type: ignore[attr-defined]
    try:
        SQLModel.metadata.create_all(engine, tables=tables)
    except (OperationalError, ProgrammingError, IntegrityError):
        SQLModel.metadata.create_all(engine, tables=tables)


def reachable(engine: Engine) -> bool:
    """Readiness: the database answers a trivial query."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


class OutboxRecord(SQLModel, table=True):
    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(index=True)
    topic: str
    key: str | None = None
    value: str
    headers: str
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = Field(default=None, index=True)


def enqueue(session: Session, source: str, event_: Contract, key: str | None) -> None:
    """Add an event to the outbox inside the caller's transaction."""
    headers = [(k, v.decode()) for k, v in cloudevent_headers(event_, f"driftloop/{source}", key)]
    session.add(
        OutboxRecord(
            source=source,
            topic=topic_for(type(event_)),
            key=key,
            value=event_.model_dump_json(),
            headers=json.dumps(headers),
        )
    )


class OutboxRelay:
    """Publishes unsent outbox rows of one source, in order, then marks them sent."""

    def __init__(self, engine: Engine, bus: Bus, source: str, poll_seconds: float = 1.0) -> None:
        self.engine = engine
        self.bus = bus
        self.source = source
        self.poll_seconds = poll_seconds
        self.wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox:{self.source}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    async def flush(self) -> int:
        """Publish everything pending now; return how many records went out."""
        sent = 0
        while True:
            with Session(self.engine) as session:
                rows = session.exec(
                    select(OutboxRecord)
                    .where(OutboxRecord.source == self.source, OutboxRecord.sent_at == None)  # noqa: E711
                    .order_by(OutboxRecord.id)  # type: ignore[arg-type]
                    .limit(100)
                ).all()
                if not rows:
                    return sent
                for row in rows:
                    headers = [(k, v.encode()) for k, v in json.loads(row.headers)]
                    await self.bus.send(row.topic, row.value.encode(), row.key, headers)
                    row.sent_at = utcnow()
                    session.add(row)
                    session.commit()
                    sent += 1

    async def _run(self) -> None:
        while True:
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying", source=self.source)
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.poll_seconds)
