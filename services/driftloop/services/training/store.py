"""Training runs in the metadata database: the durable queue and the history ops can query."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Engine
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


def create_tables(engine: Engine) -> None:
    db_create_tables(engine, [TrainingRun])


class RunStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def by_request(self, session: Session, request_event_id: str) -> TrainingRun | None:
        return session.exec(select(TrainingRun).where(TrainingRun.request_event_id == request_event_id)).first()

    def last_drift_run(self, session: Session, model_name: str) -> datetime | None:
        """When the last drift-triggered run of the model was recorded; manual runs don't debounce drift."""
        run = session.exec(
            select(TrainingRun)
            .where(
                TrainingRun.model_name == model_name,
                TrainingRun.trigger == "drift",
                col(TrainingRun.status) != "debounced",
            )
            .order_by(col(TrainingRun.created_at).desc())
        ).first()
        return aware(run.created_at) if run else None

    def open_runs(self) -> list[TrainingRun]:
        with self.session() as session:
            return list(
                session.exec(
                    select(TrainingRun)
                    .where(col(TrainingRun.status).in_(OPEN_STATES))
                    .order_by(col(TrainingRun.created_at))
                ).all()
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

    def set_status(self, run_id: str, status: str) -> None:
        with self.session() as session:
            run = session.get(TrainingRun, run_id)
            if run is not None:
                run.status = status
                if status == "running" and run.started_at is None:
                    run.started_at = utcnow()
                session.add(run)
                session.commit()
