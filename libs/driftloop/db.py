"""The metadata database (SQLite by default, PostgreSQL in production) and the transactional outbox.

A handler that changes the database and must tell the world writes the event
into ``outbox`` in the same transaction; the relay publishes it afterwards.
So a crash can repeat an event (consumers dedupe by ``event_id``) but can
never commit a change whose event is lost, nor announce a change that was
rolled back.

Replicas of a service share the database, so work that must have one writer
is guarded by a ``Lease``: a row in ``leases`` taken and renewed by a
conditional update, which both SQLite and PostgreSQL apply atomically. Lease
times come from the replicas' clocks, so hosts that share a database need
synchronised clocks (NTP); the renewal margin absorbs small skews.

API tokens live here too (``api_tokens``, hashes only): every service reads
the one table to know who is calling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, event, insert, inspect, or_, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from driftloop.auth import Identity, Role, matches, new_token, token_hash, token_id_of
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


_CREATE_ATTEMPTS = 8


def create_tables(engine: Engine, models: list[type[SQLModel]]) -> None:
    """Create missing tables and columns.

    Replicas and services sharing one database race here: each checks which
    tables exist, then creates the missing ones, and a table another process
    created in between fails the CREATE. Every retry finds more of them there,
    so a few attempts settle it.
    """
    tables: list[Table] = [m.__table__ for m in (*models, OutboxRecord, LeaseRecord)]  # type: ignore[attr-defined]
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            SQLModel.metadata.create_all(engine, tables=tables)
            break
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == _CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    add_missing_columns(engine, tables)


def add_missing_columns(engine: Engine, tables: list[Table]) -> list[str]:
    """The additive migration: ``create_all`` never alters a table it finds, so a new column is added here.

    Only nullable columns can be added this way (rows already there have no
    value for them); anything else needs a real migration and fails loudly.
    Returns ``table.column`` of each column added.
    """
    added: list[str] = []
    quote = engine.dialect.identifier_preparer.quote
    for table in tables:
        if not inspect(engine).has_table(table.name):
            continue
        present = {column["name"] for column in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"{table.name}.{column.name} is new and NOT NULL: it needs a migration")
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}"))
            except (OperationalError, ProgrammingError):
                # Another replica starting at the same moment may have added it first.
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
                continue
            log.info("column added", table=table.name, column=column.name)
            added.append(f"{table.name}.{column.name}")
    return added


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


class LeaseRecord(SQLModel, table=True):
    __tablename__ = "leases"

    name: str = Field(primary_key=True)
    holder: str
    expires_at: datetime


class Lease:
    """A named lease in the database: at most one holder until ``expires_at``, renewable by that holder only.

    Taking and renewing are one conditional ``UPDATE … WHERE holder = me OR
    expires_at < now``: PostgreSQL re-checks the condition on the row it
    locked, SQLite runs one writer at a time, so two contenders can never
    both see their update apply. A holder that dies simply stops renewing,
    and the lease passes on once it expires. Blocking calls: run them in a
    thread from async code.
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        holder: str,
        seconds: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.name = name
        self.holder = holder
        self.seconds = seconds
        self.clock = clock
        #: Until when this holder owns the lease, as far as it knows; None when it does not.
        self.expires_at: datetime | None = None

    def acquire(self) -> bool:
        """Take the lease if free or expired, or renew it if ours; True while we hold it."""
        now = self.clock()
        until = now + timedelta(seconds=self.seconds)
        table = LeaseRecord.__table__  # type: ignore[attr-defined]
        with self.engine.begin() as connection:
            taken = connection.execute(
                update(table)
                .where(
                    table.c.name == self.name,
                    or_(table.c.holder == self.holder, table.c.expires_at < now),
                )
                .values(holder=self.holder, expires_at=until)
            ).rowcount
            exists = taken or connection.execute(select(table.c.name).where(table.c.name == self.name)).first()
        if not taken and exists:
            self.expires_at = None
            return False
        if not taken:
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(table).values(name=self.name, holder=self.holder, expires_at=until))
            except IntegrityError:
                self.expires_at = None
                return False
        self.expires_at = until
        return True

    def held(self, margin: float = 0.0) -> bool:
        """Whether we hold the lease for at least ``margin`` more seconds, by our own last renewal."""
        return self.expires_at is not None and self.clock() + timedelta(seconds=margin) < self.expires_at

    def release(self) -> None:
        """Give the lease up now, so a standby need not wait for it to expire."""
        if self.expires_at is None:
            return
        table = LeaseRecord.__table__  # type: ignore[attr-defined]
        with self.engine.begin() as connection:
            connection.execute(
                update(table)
                .where(table.c.name == self.name, table.c.holder == self.holder)
                .values(expires_at=self.clock())
            )
        self.expires_at = None


class OutboxRelay:
    """Publishes unsent outbox rows of one source, in id order, then marks them sent.

    Every replica of a service runs a relay, but only the holder of the
    source's lease publishes; the others stand by and take over once the
    holder stops renewing. Two publishing at once would send duplicates, and
    out of order.
    """

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        source: str,
        poll_seconds: float = 1.0,
        *,
        holder: str | None = None,
        lease_seconds: float = 15.0,
    ) -> None:
        self.engine = engine
        self.bus = bus
        self.source = source
        self.poll_seconds = poll_seconds
        self.lease = Lease(engine, f"outbox:{source}", holder or uuid.uuid4().hex, lease_seconds)
        self.wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox:{self.source}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the send in progress be marked sent before the last flush, so stopping sends nothing twice.

        A relay cancelled between a send and its mark would find the row still
        unsent in that last flush and publish it again.
        """
        self._stopping = True
        self.wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
        await asyncio.to_thread(self.lease.release)

    async def _holding(self) -> bool:
        """Hold the lease with a third of it to spare, renewing when less is left, so no send outlives it."""
        return self.lease.held(self.lease.seconds / 3) or await asyncio.to_thread(self.lease.acquire)

    async def flush(self) -> int:
        """Publish everything pending now if this relay holds the lease; return how many records went out."""
        sent = 0
        while True:
            if not await self._holding():
                return sent
            rows = await asyncio.to_thread(self._pending)
            if not rows:
                return sent
            for row in rows:
                if not await self._holding():
                    return sent
                headers = [(k, v.encode()) for k, v in json.loads(row.headers)]
                await self.bus.send(row.topic, row.value.encode(), row.key, headers)
                await asyncio.to_thread(self._mark_sent, row)
                sent += 1

    def _pending(self) -> list[OutboxRecord]:
        with Session(self.engine) as session:
            return list(
                session.exec(
                    select(OutboxRecord)
                    .where(OutboxRecord.source == self.source, col(OutboxRecord.sent_at).is_(None))
                    .order_by(col(OutboxRecord.id))
                    .limit(100)
                ).all()
            )

    def _mark_sent(self, row: OutboxRecord) -> None:
        table = OutboxRecord.__table__  # type: ignore[attr-defined]
        with self.engine.begin() as connection:
            connection.execute(update(table).where(table.c.id == row.id).values(sent_at=utcnow()))

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying", source=self.source)
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.poll_seconds)


class ApiToken(SQLModel, table=True):
    """An API token as every service reads it from the shared database: its hash, never the token."""

    __tablename__ = "api_tokens"

    token_id: str = Field(primary_key=True)
    name: str = Field(index=True)
    role: str
    token_sha256: str
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class TokenStore:
    """Issues, revokes and checks API tokens in the metadata database every service already shares.

    Each service verifies against this table itself, so no service depends on
    another being up to authorise a call, and a revocation holds everywhere
    (after the callers' short caches expire). Blocking calls: run them in a
    thread from async code.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ready = False

    def _tables(self) -> None:
        if not self._ready:
            create_tables(self.engine, [ApiToken])
            self._ready = True

    def issue(self, name: str, role: Role) -> str:
        """Store a new token's hash and return the token itself, which exists nowhere else from now on."""
        self._tables()
        token, token_id = new_token()
        with Session(self.engine) as session:
            session.add(ApiToken(token_id=token_id, name=name, role=role.value, token_sha256=token_hash(token)))
            session.commit()
        return token

    def identify(self, token: str) -> Identity | None:
        """The identity a token proves, None when it is malformed, unknown or revoked."""
        token_id = token_id_of(token)
        if token_id is None:
            return None
        self._tables()
        with Session(self.engine) as session:
            row = session.get(ApiToken, token_id)
        if row is None or row.revoked_at is not None or not matches(token, row.token_sha256):
            return None
        return Identity(token_id=row.token_id, name=row.name, role=Role(row.role))

    def tokens(self) -> list[ApiToken]:
        self._tables()
        with Session(self.engine) as session:
            return list(session.exec(select(ApiToken).order_by(col(ApiToken.created_at))).all())

    def revoke(self, token_id: str) -> bool:
        """Revoke a token by id; False when there is no such live token."""
        self._tables()
        table = ApiToken.__table__  # type: ignore[attr-defined]
        with self.engine.begin() as connection:
            done = connection.execute(
                update(table)
                .where(table.c.token_id == token_id, table.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            ).rowcount
        return bool(done)
