"""Versions, aliases and the audit log in the metadata database.

Every alias change writes its audit row and its ``registry.events`` record (via
the outbox) in the same transaction: there is no promotion without a trace,
and no announced promotion that did not happen. It also bumps the model's
alias revision in that transaction, and the events carry it, so a consumer
can order alias changes that reach it out of order.

The audit log is append-only and hash-chained: each row stores the hash of
the row before it and of its own content (``domain.audit_digest``), and
``audit_chain`` holds the newest hash. Appends queue behind that one row's
lock, so the chain never forks, and database triggers refuse any ``UPDATE``
or ``DELETE`` of ``audit_log``; someone who drops the triggers and edits a
row still breaks the chain, which ``verify_audit`` reports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Engine, UniqueConstraint, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from driftloop.config import RolloutStrategyName
from driftloop.contracts import (
    ModelPromoted,
    ModelRolledBack,
    ModelStaged,
    ModelVersionRegistered,
    PromotionRejected,
    TrainingRunCompleted,
    utcnow,
)
from driftloop.contracts.events import GateDecision
from driftloop.db import create_tables as db_create_tables
from driftloop.db import enqueue
from driftloop.services.registry.domain import (
    AUDIT_FIELDS,
    SYSTEM_ALIASES,
    ChainLink,
    ChainReport,
    Lineage,
    audit_digest,
    next_semver,
    next_version,
    rollback_target,
    verify_chain,
)

SOURCE = "registry"


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(index=True)
    version: int
    run_id: str = Field(unique=True)
    status: str = "registered"
    #: What the version serves: the run's refit on its whole window when there is one.
    artifact_uri: str
    #: SHA-256 of the artifact the version serves, as the registry read it; None only on rows from before checksums.
    artifact_sha256: str | None = None
    #: What the gate scored: the run's model fitted on the training rows only.
    evaluated_artifact_uri: str | None = None
    holdout_uri: str
    metrics: dict[str, float] = Field(sa_column=Column(JSON))
    data_window: dict[str, Any] = Field(sa_column=Column(JSON))
    parent_version: int | None = None
    correlation_id: str
    created_at: datetime = Field(default_factory=utcnow)
    gate: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    reference_uri: str | None = None
    #: MAJOR.MINOR.PATCH beside the integer: major when the features or the dataset schema changed.
    semver: str | None = None
    #: The run's features and the dataset schema's fingerprint at registration, which the next semver compares.
    feature_names: list[str] | None = Field(default=None, sa_column=Column(JSON))
    schema_fingerprint: str | None = None
    #: Since when the version waits for a person's approval; None when it never did.
    awaiting_since: datetime | None = None
    #: When its wait past the approval timeout was escalated, once.
    escalated_at: datetime | None = None


class Alias(SQLModel, table=True):
    __tablename__ = "model_aliases"

    model_name: str = Field(primary_key=True)
    alias: str = Field(primary_key=True)
    version: int
    updated_at: datetime = Field(default_factory=utcnow)


class AliasRevision(SQLModel, table=True):
    """A counter per model, bumped by every alias move: the order of alias changes, whoever made them."""

    __tablename__ = "model_alias_revisions"

    model_name: str = Field(primary_key=True)
    revision: int = 0


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    #: The token's name for a person's change; "gate" or "training" for the loop's own.
    actor: str
    #: The token's role; None for the loop's own changes.
    actor_role: str | None = None
    action: str
    model_name: str = Field(index=True)
    version: int | None = None
    previous_version: int | None = None
    reason: str = ""
    correlation_id: str | None = None
    #: The gate's decision with all its numbers, for promotions, rejections and approvals it decided.
    decision: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    #: None only on rows from before the chain.
    prev_hash: str | None = None
    row_hash: str | None = None


class AuditChain(SQLModel, table=True):
    """The chain's head: one row whose lock orders appends and whose hash is the newest row's."""

    __tablename__ = "audit_chain"

    name: str = Field(primary_key=True)
    head_hash: str = ""
    length: int = 0


class ModelPin(SQLModel, table=True):
    """A pinned champion: the gate may not replace it, and people must unpin before they move it."""

    __tablename__ = "model_pins"

    model_name: str = Field(primary_key=True)
    version: int
    actor: str
    reason: str = ""
    at: datetime = Field(default_factory=utcnow)


_APPEND_ONLY = {
    "sqlite": [
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
        "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$ LANGUAGE plpgsql",
        "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    ],
}


def create_tables(engine: Engine) -> None:
    db_create_tables(engine, [ModelVersion, Alias, AliasRevision, AuditEntry, AuditChain, ModelPin])
    statements = _APPEND_ONLY.get(engine.dialect.name, [])
    if statements:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                # Replicas starting together would race on the trigger; one at a time, by a transaction lock.
                connection.execute(text("SELECT pg_advisory_xact_lock(7340033)"))
            for statement in statements:
                connection.execute(text(statement))


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


def _refused(row: ModelVersion, reason: str) -> GateDecision:
    """The gate's decision on ``row`` turned into a refusal for ``reason``, its numbers kept where it has them."""
    if row.gate:
        return GateDecision.model_validate(row.gate).model_copy(update={"passed": False, "reason": reason})
    return GateDecision(metric="", challenger=0.0, champion=None, min_improvement=0.0, passed=False, reason=reason)


class Registry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def models(self) -> list[str]:
        with self.session() as s:
            return sorted(set(s.exec(select(ModelVersion.model_name)).all()))

    def versions(self, model: str) -> list[ModelVersion]:
        with self.session() as s:
            return list(
                s.exec(
                    select(ModelVersion).where(ModelVersion.model_name == model).order_by(col(ModelVersion.version))
                ).all()
            )

    def aliases(self, model: str) -> dict[str, int]:
        with self.session() as s:
            return {a.alias: a.version for a in s.exec(select(Alias).where(Alias.model_name == model)).all()}

    def version(self, s: Session, model: str, version: int) -> ModelVersion:
        row = s.exec(
            select(ModelVersion).where(ModelVersion.model_name == model, ModelVersion.version == version)
        ).first()
        if row is None:
            raise NotFound(f"{model} has no version {version}")
        return row

    def champion(self, s: Session, model: str) -> ModelVersion | None:
        alias = s.get(Alias, (model, "champion"))
        return self.version(s, model, alias.version) if alias else None

    def by_version(self, s: Session, model: str, version: int) -> ModelVersion | None:
        return s.exec(
            select(ModelVersion).where(ModelVersion.model_name == model, ModelVersion.version == version)
        ).first()

    def by_run(self, run_id: str) -> ModelVersion | None:
        with self.session() as s:
            return s.exec(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()

    def pinned(self, s: Session, model: str) -> ModelPin | None:
        return s.get(ModelPin, model)

    def _audit(self, s: Session, entry: AuditEntry) -> AuditEntry:
        """Append a row to the chain inside the caller's transaction.

        The head row is locked first (a single ``UPDATE``, as for alias
        revisions), so concurrent appends from replicas link one after the
        other.
        """
        chain = AuditChain.__table__  # type: ignore[attr-defined]
        lock = update(chain).where(chain.c.name == "audit").values(length=chain.c.length + 1)
        if not s.connection().execute(lock).rowcount:
            try:
                with s.begin_nested():
                    s.add(AuditChain(name="audit", head_hash="", length=1))
            except IntegrityError:
                s.connection().execute(lock)
        head = s.get(AuditChain, "audit", populate_existing=True)
        assert head is not None
        entry.at = utcnow()
        entry.prev_hash = head.head_hash
        entry.row_hash = audit_digest(head.head_hash, entry.model_dump(include=set(AUDIT_FIELDS)))
        head.head_hash = entry.row_hash
        s.add(head)
        s.add(entry)
        return entry

    def verify_audit(self) -> ChainReport:
        """Check the whole audit chain, oldest row first, against the head."""
        with self.session() as s:
            head = s.get(AuditChain, "audit")
            rows = s.exec(select(AuditEntry).order_by(col(AuditEntry.id))).all()
            links = [
                ChainLink(
                    id=row.id or 0,
                    fields=row.model_dump(include=set(AUDIT_FIELDS)),
                    prev_hash=row.prev_hash,
                    row_hash=row.row_hash,
                )
                for row in rows
            ]
        return verify_chain(links, head.head_hash if head else None)

    def audit(self, model: str | None = None, limit: int = 200) -> list[AuditEntry]:
        with self.session() as s:
            query = select(AuditEntry).order_by(col(AuditEntry.id).desc()).limit(limit)
            if model:
                query = query.where(AuditEntry.model_name == model)
            return list(s.exec(query).all())

    def register(
        self, s: Session, run: TrainingRunCompleted, artifact_sha256: str, schema_fingerprint: str
    ) -> ModelVersion:
        """Record the run's model as a new version; its parent is the champion of the moment.

        ``artifact_sha256`` is the checksum of the bytes the registry scored: every later load is held to it.
        The semantic version follows from the newest version before it, whatever became of that one.
        """
        latest = s.exec(
            select(ModelVersion)
            .where(ModelVersion.model_name == run.model_name)
            .order_by(col(ModelVersion.version).desc())
            .limit(1)
        ).first()
        champion = self.champion(s, run.model_name)
        previous = Lineage(latest.semver, latest.feature_names, latest.schema_fingerprint) if latest else None
        row = ModelVersion(
            model_name=run.model_name,
            version=next_version([latest.version] if latest else []),
            semver=next_semver(previous, run.feature_names, schema_fingerprint),
            feature_names=list(run.feature_names),
            schema_fingerprint=schema_fingerprint,
            run_id=run.run_id,
            artifact_uri=run.refit_artifact_uri or run.artifact_uri,
            artifact_sha256=artifact_sha256,
            evaluated_artifact_uri=run.artifact_uri,
            holdout_uri=run.holdout_uri,
            reference_uri=run.reference_uri,
            metrics=run.metrics,
            data_window=run.data_window.model_dump(mode="json"),
            parent_version=champion.version if champion else None,
            correlation_id=run.correlation_id,
        )
        s.add(row)
        s.flush()
        self._audit(
            s,
            AuditEntry(
                actor="training",
                action="registered",
                model_name=row.model_name,
                version=row.version,
                reason=f"run {run.run_id}",
                correlation_id=run.correlation_id,
            ),
        )
        enqueue(
            s,
            SOURCE,
            ModelVersionRegistered(
                correlation_id=run.correlation_id,
                causation_id=run.event_id,
                model_name=row.model_name,
                version=row.version,
                run_id=run.run_id,
                artifact_uri=row.artifact_uri,
                artifact_sha256=row.artifact_sha256,
                metrics=row.metrics,
                parent_version=row.parent_version,
                data_window=run.data_window,
                reference_uri=row.reference_uri,
                semver=row.semver,
            ),
            row.model_name,
        )
        return row

    def alias_revision(self, model: str) -> int:
        with self.session() as s:
            row = s.get(AliasRevision, model)
            return row.revision if row else 0

    def _bump_revision(self, s: Session, model: str) -> int:
        """Add one to the model's alias revision in the caller's transaction and return it.

        The increment is a single ``UPDATE``, so on PostgreSQL it locks the
        counter row until commit: concurrent alias moves of one model (two
        registry replicas, or the gate and an operator) queue up behind it and
        get distinct, increasing revisions. Called first in an alias move, so
        what the move reads next is what the previous move committed.
        """
        counter = AliasRevision.__table__  # type: ignore[attr-defined]
        bump = update(counter).where(counter.c.model_name == model).values(revision=counter.c.revision + 1)
        if not s.connection().execute(bump).rowcount:
            try:
                with s.begin_nested():
                    s.add(AliasRevision(model_name=model, revision=1))
                return 1
            except IntegrityError:
                # Another transaction created the counter first; it is there to be bumped now.
                s.connection().execute(bump)
        row = s.get(AliasRevision, model, populate_existing=True)
        assert row is not None
        return row.revision

    def _set_alias(self, s: Session, model: str, alias: str, version: int) -> None:
        row = s.get(Alias, (model, alias)) or Alias(model_name=model, alias=alias, version=version)
        row.version, row.updated_at = version, utcnow()
        s.add(row)

    def promote(
        self,
        s: Session,
        row: ModelVersion,
        *,
        actor: str,
        reason: str,
        causation_id: str | None,
        correlation_id: str,
        decision: GateDecision | None,
        actor_role: str | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> ModelPromoted:
        """Move ``champion`` to ``row``: the one path for gate, rollout and operator promotions alike.

        ``evidence`` is the online verdict's, for a promotion that ends a staged rollout.
        """
        revision = self._bump_revision(s, row.model_name)
        previous = self.champion(s, row.model_name)
        if previous is not None and previous.version == row.version:
            raise Conflict(f"{row.model_name} v{row.version} is already champion")
        self._refuse_if_pinned(s, row.model_name)
        if previous is not None:
            previous.status = "archived"
            s.add(previous)
        row.status = "champion"
        s.add(row)
        self._set_alias(s, row.model_name, "champion", row.version)
        recorded = decision.model_dump(mode="json") if decision else None
        if evidence is not None:
            recorded = {**(recorded or {}), "online": evidence}
        self._audit(
            s,
            AuditEntry(
                actor=actor,
                actor_role=actor_role,
                action="promoted",
                model_name=row.model_name,
                version=row.version,
                previous_version=previous.version if previous else None,
                reason=reason,
                correlation_id=correlation_id,
                decision=recorded,
            ),
        )
        event = ModelPromoted(
            correlation_id=correlation_id,
            causation_id=causation_id,
            model_name=row.model_name,
            version=row.version,
            previous_version=previous.version if previous else None,
            artifact_uri=row.artifact_uri,
            artifact_sha256=row.artifact_sha256,
            actor=actor,
            decision=decision,
            revision=revision,
            semver=row.semver,
        )
        enqueue(s, SOURCE, event, row.model_name)
        return event

    def adopt(
        self,
        s: Session,
        row: ModelVersion,
        strategy: RolloutStrategyName,
        *,
        actor: str,
        reason: str,
        causation_id: str | None,
        decision: GateDecision | None,
        actor_role: str | None = None,
    ) -> None:
        """Give a version that passed the gate (and its approver) the traffic, as the model's rollout says.

        ``direct``, or a first version with no champion to compare with, is
        promoted at once; any other strategy stages it as the challenger, and
        the champion alias moves only when its rollout completes
        (``complete_rollout``).
        """
        if strategy == "direct" or self.champion(s, row.model_name) is None:
            self.promote(
                s,
                row,
                actor=actor,
                actor_role=actor_role,
                reason=reason,
                causation_id=causation_id,
                correlation_id=row.correlation_id,
                decision=decision,
            )
        else:
            self.stage(s, row, strategy, actor=actor, actor_role=actor_role, reason=reason, decision=decision)

    def stage(
        self,
        s: Session,
        row: ModelVersion,
        strategy: RolloutStrategyName,
        *,
        actor: str,
        reason: str,
        decision: GateDecision | None,
        actor_role: str | None = None,
    ) -> ModelStaged:
        """Make ``row`` the challenger that rolls out beside the champion; a rollout still running is superseded."""
        revision = self._bump_revision(s, row.model_name)
        champion = self.champion(s, row.model_name)
        if champion is None or strategy == "direct":
            raise Conflict(f"{row.model_name} v{row.version} has no champion to roll out beside")
        self._refuse_if_pinned(s, row.model_name)
        running = select(ModelVersion).where(
            ModelVersion.model_name == row.model_name, ModelVersion.status == "rolling_out"
        )
        for other in s.exec(running).all():
            other.status = "superseded"
            s.add(other)
            self._audit(
                s,
                AuditEntry(
                    actor=actor,
                    actor_role=actor_role,
                    action="rollout_superseded",
                    model_name=other.model_name,
                    version=other.version,
                    previous_version=champion.version,
                    reason=f"superseded by v{row.version}",
                    correlation_id=other.correlation_id,
                ),
            )
        row.status = "rolling_out"
        s.add(row)
        self._set_alias(s, row.model_name, "challenger", row.version)
        self._audit(
            s,
            AuditEntry(
                actor=actor,
                actor_role=actor_role,
                action="rollout_begun",
                model_name=row.model_name,
                version=row.version,
                previous_version=champion.version,
                reason=f"{strategy}: {reason}",
                correlation_id=row.correlation_id,
                decision=decision.model_dump(mode="json") if decision else None,
            ),
        )
        event = ModelStaged(
            correlation_id=row.correlation_id,
            model_name=row.model_name,
            version=row.version,
            champion_version=champion.version,
            artifact_uri=row.artifact_uri,
            artifact_sha256=row.artifact_sha256,
            strategy=strategy,
            actor=actor,
            decision=decision,
            revision=revision,
            semver=row.semver,
        )
        enqueue(s, SOURCE, event, row.model_name)
        return event

    def _move(self, s: Session, row: ModelVersion, from_status: str, to_status: str) -> bool:
        """Move ``row`` from ``from_status`` to ``to_status`` once, and free the challenger alias it held.

        The move is one conditional ``UPDATE``, so two approvers, an approver
        and the timeout, a replayed verdict or two registry replicas cannot
        both decide it: the second finds nothing to move and gets False.
        """
        table = ModelVersion.__table__  # type: ignore[attr-defined]
        taken = s.connection().execute(
            update(table).where(table.c.id == row.id, table.c.status == from_status).values(status=to_status)
        )
        if not taken.rowcount:
            return False
        s.refresh(row)
        challenger = s.get(Alias, (row.model_name, "challenger"))
        if challenger is not None and challenger.version == row.version:
            s.delete(challenger)
        return True

    def _take_rollout(self, s: Session, model: str, version: int, status: str) -> ModelVersion | None:
        """A rolling-out version moved to ``status``; None when it is not rolling out (any more)."""
        row = self.by_version(s, model, version)
        return row if row is not None and self._move(s, row, "rolling_out", status) else None

    def note_rollout(
        self, s: Session, model: str, version: int, action: str, reason: str, evidence: dict[str, Any]
    ) -> bool:
        """Record a running rollout's start or step in the audit; False when the version is not rolling out."""
        row = self.version(s, model, version)
        if row.status != "rolling_out":
            return False
        self._audit(
            s,
            AuditEntry(
                actor="rollout",
                action=action,
                model_name=model,
                version=version,
                previous_version=row.parent_version,
                reason=reason,
                correlation_id=row.correlation_id,
                decision=evidence,
            ),
        )
        return True

    def complete_rollout(
        self, s: Session, model: str, version: int, *, reason: str, evidence: dict[str, Any], causation_id: str
    ) -> ModelPromoted | PromotionRejected | None:
        """The online verdict let the challenger through: it becomes champion. None if it was not rolling out.

        A champion pinned while the rollout ran stays: the rollout ends as aborted, with the pin as its reason.
        """
        pin = self.pinned(s, model)
        if pin is not None:
            held = f"champion v{pin.version} was pinned by {pin.actor} while it rolled out"
            return self.abort_rollout(s, model, version, reason=held, evidence=evidence, causation_id=causation_id)
        row = self._take_rollout(s, model, version, "rollout_completed")
        if row is None:
            return None
        gate = GateDecision.model_validate(row.gate) if row.gate else None
        return self.promote(
            s,
            row,
            actor="rollout",
            reason=f"rollout completed: {reason}",
            causation_id=causation_id,
            correlation_id=row.correlation_id,
            decision=gate,
            evidence=evidence,
        )

    def abort_rollout(
        self, s: Session, model: str, version: int, *, reason: str, evidence: dict[str, Any], causation_id: str
    ) -> PromotionRejected | None:
        """The rollout was stopped: the champion keeps serving, and the loop reads it as a rejected challenger."""
        row = self._take_rollout(s, model, version, "aborted")
        if row is None:
            return None
        self._bump_revision(s, model)
        champion = self.champion(s, model)
        refusal = f"rollout aborted: {reason}"
        decision = _refused(row, refusal)
        self._audit(
            s,
            AuditEntry(
                actor="rollout",
                action="rollout_aborted",
                model_name=model,
                version=version,
                previous_version=champion.version if champion else None,
                reason=refusal,
                correlation_id=row.correlation_id,
                decision={**decision.model_dump(mode="json"), "online": evidence},
            ),
        )
        event = PromotionRejected(
            correlation_id=row.correlation_id,
            causation_id=causation_id,
            model_name=model,
            version=version,
            champion_version=champion.version if champion else None,
            decision=decision,
        )
        enqueue(s, SOURCE, event, model)
        return event

    def reject(
        self,
        s: Session,
        row: ModelVersion,
        decision: GateDecision,
        causation_id: str | None,
        *,
        actor: str = "gate",
        actor_role: str | None = None,
    ) -> None:
        """Refuse the version; training and monitoring read the event as the loop's turn ending unresolved."""
        champion = self.champion(s, row.model_name)
        row.status = "rejected"
        s.add(row)
        self._audit(
            s,
            AuditEntry(
                actor=actor,
                actor_role=actor_role,
                action="rejected",
                model_name=row.model_name,
                version=row.version,
                previous_version=champion.version if champion else None,
                reason=decision.reason,
                correlation_id=row.correlation_id,
                decision=decision.model_dump(mode="json"),
            ),
        )
        enqueue(
            s,
            SOURCE,
            PromotionRejected(
                correlation_id=row.correlation_id,
                causation_id=causation_id,
                model_name=row.model_name,
                version=row.version,
                champion_version=champion.version if champion else None,
                decision=decision,
            ),
            row.model_name,
        )

    def hold_for_approval(self, s: Session, row: ModelVersion, decision: GateDecision) -> None:
        self._bump_revision(s, row.model_name)
        row.status = "challenger"
        row.awaiting_since = utcnow()
        s.add(row)
        self._set_alias(s, row.model_name, "challenger", row.version)
        self._audit(
            s,
            AuditEntry(
                actor="gate",
                action="awaiting_approval",
                model_name=row.model_name,
                version=row.version,
                reason=decision.reason,
                correlation_id=row.correlation_id,
                decision=decision.model_dump(mode="json"),
            ),
        )

    def rollback(
        self, s: Session, model: str, *, actor: str, reason: str, actor_role: str | None = None
    ) -> ModelRolledBack:
        """Give ``champion`` back to the previous champion in the version history, one step back each time.

        The version rolled back from is marked ``rolled_back``, so the next
        rollback steps past it to the champion before, never forward again.
        """
        revision = self._bump_revision(s, model)
        current = self.champion(s, model)
        if current is None:
            raise NotFound(f"{model} has no champion")
        self._refuse_if_pinned(s, model)
        history = {
            row.version: row.status for row in s.exec(select(ModelVersion).where(ModelVersion.model_name == model))
        }
        target_version = rollback_target(current.version, history)
        if target_version is None:
            raise Conflict(f"{model} v{current.version} has no previous champion to roll back to")
        target = self.version(s, model, target_version)
        current.status, target.status = "rolled_back", "champion"
        s.add(current)
        s.add(target)
        self._set_alias(s, model, "champion", target.version)
        self._audit(
            s,
            AuditEntry(
                actor=actor,
                actor_role=actor_role,
                action="rolled_back",
                model_name=model,
                version=target.version,
                previous_version=current.version,
                reason=reason,
                correlation_id=current.correlation_id,
            ),
        )
        event = ModelRolledBack(
            correlation_id=current.correlation_id,
            model_name=model,
            from_version=current.version,
            to_version=target.version,
            artifact_uri=target.artifact_uri,
            artifact_sha256=target.artifact_sha256,
            actor=actor,
            reason=reason,
            revision=revision,
        )
        enqueue(s, SOURCE, event, model)
        return event

    def _refuse_if_pinned(self, s: Session, model: str) -> None:
        pin = self.pinned(s, model)
        if pin is not None:
            raise Conflict(
                f"{model} v{pin.version} is pinned by {pin.actor} ({pin.reason or 'no reason given'}): unpin it first"
            )

    def pin(self, s: Session, model: str, *, actor: str, actor_role: str | None, reason: str) -> ModelPin:
        """Keep the current champion until someone unpins it: the gate's promotions are refused meanwhile."""
        champion = self.champion(s, model)
        if champion is None:
            raise NotFound(f"{model} has no champion to pin")
        if self.pinned(s, model) is not None:
            raise Conflict(f"{model} is already pinned")
        pin = ModelPin(model_name=model, version=champion.version, actor=actor, reason=reason)
        s.add(pin)
        self._audit(
            s,
            AuditEntry(
                actor=actor,
                actor_role=actor_role,
                action="pinned",
                model_name=model,
                version=champion.version,
                reason=reason,
                correlation_id=champion.correlation_id,
            ),
        )
        return pin

    def unpin(self, s: Session, model: str, *, actor: str, actor_role: str | None, reason: str) -> None:
        pin = self.pinned(s, model)
        if pin is None:
            raise Conflict(f"{model} is not pinned")
        s.delete(pin)
        self._audit(
            s,
            AuditEntry(
                actor=actor,
                actor_role=actor_role,
                action="unpinned",
                model_name=model,
                version=pin.version,
                reason=reason,
            ),
        )

    def pending(self, model: str | None = None) -> list[ModelVersion]:
        """Versions that passed the gate and wait for a person, oldest first."""
        with self.session() as s:
            query = select(ModelVersion).where(ModelVersion.status == "challenger").order_by(col(ModelVersion.id))
            if model:
                query = query.where(ModelVersion.model_name == model)
            return list(s.exec(query).all())

    def _take_pending(self, s: Session, model: str, version: int, status: str) -> ModelVersion:
        """Move a waiting version to ``status``, or refuse if it no longer waits."""
        row = self.version(s, model, version)
        if not self._move(s, row, "challenger", status):
            raise Conflict(f"{model} v{version} is not awaiting approval (it is {row.status})")
        return row

    def approve(
        self,
        s: Session,
        model: str,
        version: int,
        strategy: RolloutStrategyName,
        *,
        actor: str,
        actor_role: str,
        reason: str,
    ) -> ModelVersion:
        """Roll out a waiting version as the gate would have, with the approver as the audit's actor."""
        row = self._take_pending(s, model, version, "challenger_approved")
        decision = GateDecision.model_validate(row.gate) if row.gate else None
        self.adopt(
            s,
            row,
            strategy,
            actor=actor,
            actor_role=actor_role,
            reason=f"approved: {reason}",
            causation_id=None,
            decision=decision,
        )
        return row

    def refuse(self, s: Session, model: str, version: int, *, actor: str, actor_role: str | None, reason: str) -> None:
        """Reject a waiting version: a person's reason, or the timeout's, on the gate's numbers."""
        row = self._take_pending(s, model, version, "rejected")
        self.reject(s, row, _refused(row, f"rejected by {actor}: {reason}"), None, actor=actor, actor_role=actor_role)

    def escalate(self, s: Session, model: str, version: int, *, waited: str) -> bool:
        """Record once that a version waited past the timeout; False when it was already escalated or decided."""
        row = self.version(s, model, version)
        table = ModelVersion.__table__  # type: ignore[attr-defined]
        marked = s.connection().execute(
            update(table)
            .where(table.c.id == row.id, table.c.status == "challenger", table.c.escalated_at.is_(None))
            .values(escalated_at=utcnow())
        )
        if not marked.rowcount:
            return False
        self._audit(
            s,
            AuditEntry(
                actor="registry",
                action="approval_escalated",
                model_name=model,
                version=version,
                reason=f"awaiting approval for {waited}",
                correlation_id=row.correlation_id,
            ),
        )
        return True

    def set_alias(
        self, s: Session, model: str, alias: str, version: int, *, actor: str, actor_role: str, reason: str
    ) -> None:
        """Point an operator's alias at a version; the system's aliases (and so serving) are never touched."""
        if alias in SYSTEM_ALIASES:
            raise Conflict(f"{alias!r} is moved by the registry itself: promote, approve or roll back instead")
        target = self.version(s, model, version)
        self._bump_revision(s, model)
        current = s.get(Alias, (model, alias))
        self._set_alias(s, model, alias, target.version)
        self._audit(
            s,
            AuditEntry(
                actor=actor,
                actor_role=actor_role,
                action=f"alias_set:{alias}",
                model_name=model,
                version=target.version,
                previous_version=current.version if current else None,
                reason=reason,
                correlation_id=target.correlation_id,
            ),
        )

    def delete_alias(self, s: Session, model: str, alias: str, *, actor: str, actor_role: str, reason: str) -> None:
        if alias in SYSTEM_ALIASES:
            raise Conflict(f"{alias!r} is moved by the registry itself")
        current = s.get(Alias, (model, alias))
        if current is None:
            raise NotFound(f"{model} has no alias {alias!r}")
        self._bump_revision(s, model)
        s.delete(current)
        self._audit(
            s,
            AuditEntry(
                actor=actor,
                actor_role=actor_role,
                action=f"alias_deleted:{alias}",
                model_name=model,
                previous_version=current.version,
                reason=reason,
            ),
        )
