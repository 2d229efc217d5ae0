"""Training runs in the metadata database: the durable queue and the history ops can query."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Engine, or_, update
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Field, Session, SQLModel, col, select

from driftloop.contracts import utcnow
from driftloop.db import aware
from driftloop.db import create_tables as db_create_tables

#: A run is picked up again after a restart while it is in one of these states.
OPEN_STATES = ("queued", "waiting_for_data", "running")


class TrainingRun(SQLModel, table=True):
    __tablename__ = "training_runs"

    run_id: str = Field(primary_key=True)
    #: The request or drift event that caused the run; unique, so a redelivered request makes no second run.
    request_event_id: str = Field(unique=True)
    model_name: str = Field(index=True)
    status: str = Field(index=True)
    trigger: str
    requested_by: str
    correlation_id: str
    since: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    metrics: dict[str, float] | None = Field(default=None, sa_column=Column(JSON))
    data_window: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    artifact_uri: str | None = None
    error: str | None = None
    #: The replica (``instance_id``) that claimed the run, and until when its claim holds unless renewed.
    owner: str | None = None
    lease_until: datetime | None = None
    #: A drift run admitted within the cooldown of the one before is not claimed before this.
    not_before: datetime | None = None


def create_tables(engine: Engine) -> None:
    db_create_tables(engine, [TrainingRun])


class RunStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def by_request(self, session: Session, request_event_id: str) -> TrainingRun | None:
        return session.exec(select(TrainingRun).where(TrainingRun.request_event_id == request_event_id)).first()

    def drift_turn(self, session: Session, model_name: str) -> tuple[bool, datetime | None]:
        """Whether a drift-triggered run of the model is open, and when the last one was recorded; manual runs
        and debounced drifts count for neither."""
        drift_runs = select(TrainingRun).where(
            TrainingRun.model_name == model_name,
            TrainingRun.trigger == "drift",
            col(TrainingRun.status) != "debounced",
        )
        last = session.exec(drift_runs.order_by(col(TrainingRun.created_at).desc())).first()
        is_open = session.exec(drift_runs.where(col(TrainingRun.status).in_(OPEN_STATES))).first() is not None
        return is_open, aware(last.created_at) if last else None

    @staticmethod
    def _claimable(owner: str, now: datetime) -> ColumnElement[bool]:
        """Open and due, and nobody's, or its owner's lease ran out, or it is ours from before a restart."""
        due = or_(col(TrainingRun.not_before).is_(None), col(TrainingRun.not_before) <= now)
        return (
            col(TrainingRun.status).in_(OPEN_STATES)
            & due
            & or_(
                col(TrainingRun.owner).is_(None),
                col(TrainingRun.lease_until) < now,
                col(TrainingRun.owner) == owner,
            )
        )

    def claim_next(self, owner: str, lease_seconds: float, now: datetime | None = None) -> TrainingRun | None:
        """Claim the oldest claimable run for ``owner`` and mark it running; None when there is none.

        A claimed run is skipped by every other replica until its lease
        expires, so each run is worked by one replica at a time. Runs this
        owner holds are claimable again: an instance id names one live process,
        so a claim under our own id is left over from our previous life.
        """
        now = now or utcnow()
        until = now + timedelta(seconds=lease_seconds)
        claimable = self._claimable(owner, now)
        with self.session() as session:
            if self.engine.dialect.name == "postgresql":
                # Rows another replica is claiming right now are locked: skip them instead of waiting.
                run = session.exec(
                    select(TrainingRun)
                    .where(claimable)
                    .order_by(col(TrainingRun.created_at))
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if run is None:
                    return None
                run.owner, run.lease_until, run.status = owner, until, "running"
                run.started_at = run.started_at or now
                session.add(run)
                session.commit()
                return run
            candidates = session.exec(
                select(TrainingRun.run_id).where(claimable).order_by(col(TrainingRun.created_at))
            ).all()
            session.rollback()
            for run_id in candidates:
                # The condition is re-checked by the UPDATE itself: the rowcount says whether we won.
                won = (
                    session.connection()
                    .execute(
                        update(TrainingRun)
                        .where(col(TrainingRun.run_id) == run_id, claimable)
                        .values(owner=owner, lease_until=until, status="running")
                    )
                    .rowcount
                )
                session.commit()
                if won:
                    run = session.get(TrainingRun, run_id)
                    assert run is not None
                    if run.started_at is None:
                        run.started_at = now
                        session.add(run)
                        session.commit()
                    return run
            return None

    def renew(self, run_id: str, owner: str, lease_seconds: float, now: datetime | None = None) -> bool:
        """Extend our claim on a run; False when it is no longer ours (our lease ran out and another took it).

        A run we have just closed is still ours: a renewal racing our own
        finish must not read as a lost claim.
        """
        now = now or utcnow()
        with self.session() as session:
            renewed = (
                session.connection()
                .execute(
                    update(TrainingRun)
                    .where(col(TrainingRun.run_id) == run_id, col(TrainingRun.owner) == owner)
                    .values(lease_until=now + timedelta(seconds=lease_seconds))
                )
                .rowcount
            )
            session.commit()
        return bool(renewed)

    def finish(self, session: Session, run_id: str, owner: str, **values: Any) -> bool:
        """Close a run in the caller's transaction, if ``owner`` still holds it; the caller commits."""
        values = {**values, "finished_at": values.get("finished_at") or utcnow()}
        return bool(
            session.connection()
            .execute(
                update(TrainingRun)
                .where(
                    col(TrainingRun.run_id) == run_id,
                    col(TrainingRun.owner) == owner,
                    col(TrainingRun.status).in_(OPEN_STATES),
                )
                .values(**values)
            )
            .rowcount
        )

    def get(self, run_id: str) -> TrainingRun | None:
        with self.session() as session:
            return session.get(TrainingRun, run_id)

    def list(self, model_name: str | None = None, limit: int = 100) -> list[TrainingRun]:
        with self.session() as session:
            query = select(TrainingRun).order_by(col(TrainingRun.created_at).desc()).limit(limit)
            if model_name:
                query = query.where(TrainingRun.model_name == model_name)
            return list(session.exec(query).all())

    def set_status(self, run_id: str, owner: str, status: str) -> None:
        """Move a run we own between open states; a run that is no longer ours is left alone."""
        with self.session() as session:
            session.connection().execute(
                update(TrainingRun)
                .where(
                    col(TrainingRun.run_id) == run_id,
                    col(TrainingRun.owner) == owner,
                    col(TrainingRun.status).in_(OPEN_STATES),
                )
                .values(status=status)
            )
            session.commit()
