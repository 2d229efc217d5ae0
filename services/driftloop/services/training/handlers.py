"""Requests and drift events in, queued runs out; the worker turns queued runs into ``training.runs`` events.

The handler only records the run (durably, so the offset can be committed);
the worker may then take minutes waiting for labelled data and fitting
without holding up the consumer, and a restart resumes open runs from the
database. With several replicas each worker claims a run before working it
(``RunStore.claim_next``) and renews the claim while it works, so a run is
worked by one replica at a time and passes to another if its replica dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import IntegrityError
from threadpoolctl import threadpool_limits

from driftloop.artifacts import ArtifactStore, sha256_hex
from driftloop.bus import Record
from driftloop.bus.faults import backoff_delay, classify
from driftloop.config import DriftloopConfig
from driftloop.contracts import DriftDetected, RetrainRequested, TrainingRunCompleted, TrainingRunFailed, utcnow
from driftloop.contracts.events import DataWindow
from driftloop.db import OutboxRelay, aware, enqueue
from driftloop.logging import get_logger
from driftloop.metrics import RETRIES
from driftloop.offline import OfflineStore, TrainingRow
from driftloop.services.training.domain import (
    admit_drift,
    enough_rows,
    fit,
    holdout_record,
    reference_sample,
    refit,
    retrains_on,
    time_split,
)
from driftloop.services.training.settings import TrainingSettings
from driftloop.services.training.store import RunStore, TrainingRun

log = get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


async def fitting(threads: int, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``work`` in a worker thread, its OpenMP pool limited to ``threads``.

    OpenMP keeps the limit per calling thread, so it is set in the worker
    itself; see ``TrainingSettings.fit_threads`` for why it is low.
    """

    def limited() -> T:
        with threadpool_limits(limits=threads, user_api="openmp"):
            return work(*args, **kwargs)

    return await asyncio.to_thread(limited)


class RequestHandlers:
    def __init__(self, runs: RunStore, config: DriftloopConfig, wakeup: asyncio.Event) -> None:
        self.runs = runs
        self.config = config
        self.wakeup = wakeup

    async def __call__(self, record: Record) -> None:
        if record.topic == "drift":
            event = record.parse_internal()
            if isinstance(event, DriftDetected):
                await self.on_drift(event)
        else:
            await self.on_request(record.parse(RetrainRequested))

    async def on_request(self, request: RetrainRequested) -> None:
        self._queue(
            request.event_id,
            request.model_name,
            request.reason,
            request.requested_by,
            request.correlation_id,
            request.since,
            debounced=False,
        )

    async def on_drift(self, drift: DriftDetected) -> None:
        if not retrains_on(drift.kind, self.config.drift.data):
            log.info(
                "data drift noted, no run: drift.data.retrain is off", model=drift.model_name, feature=drift.feature
            )
            return
        with self.runs.session() as session:
            open_run, last = self.runs.drift_turn(session, drift.model_name)
        debounced, not_before = admit_drift(open_run, last, utcnow(), self.config.drift.cooldown)
        self._queue(
            drift.event_id,
            drift.model_name,
            "drift",
            "monitoring",
            drift.correlation_id,
            drift.change_point_time,
            debounced=debounced,
            not_before=not_before,
        )

    def _queue(
        self,
        request_id: str,
        model: str,
        trigger: str,
        requested_by: str,
        correlation_id: str,
        since: datetime | None,
        *,
        debounced: bool,
        not_before: datetime | None = None,
    ) -> None:
        if model not in {m.name for m in self.config.models}:
            log.warning("training request for an unknown model ignored", model=model)
            return
        run = TrainingRun(
            run_id=uuid.uuid4().hex[:12],
            request_event_id=request_id,
            model_name=model,
            status="debounced" if debounced else "queued",
            trigger=trigger,
            requested_by=requested_by,
            correlation_id=correlation_id,
            since=since,
            not_before=not_before,
        )
        with self.runs.session() as session:
            if self.runs.by_request(session, request_id) is not None:
                return
            session.add(run)
            try:
                session.commit()
            except IntegrityError:
                return
        log.info(
            "training run recorded",
            run_id=run.run_id,
            model=model,
            status=run.status,
            trigger=trigger,
            not_before=not_before.isoformat() if not_before else None,
        )
        self.wakeup.set()


class RunWorker:
    """Executes open runs one at a time, oldest first."""

    def __init__(
        self,
        settings: TrainingSettings,
        config: DriftloopConfig,
        runs: RunStore,
        store: ArtifactStore,
        relay: OutboxRelay,
    ) -> None:
        self.settings = settings
        self.config = config
        self.runs = runs
        self.store = store
        self.relay = relay
        self.wakeup = asyncio.Event()
        self.current: str | None = None

    @property
    def owner(self) -> str:
        return self.settings.instance_id

    async def run_forever(self) -> None:
        failures = 0
        while True:
            self.wakeup.clear()
            try:
                while run := await asyncio.to_thread(self.runs.claim_next, self.owner, self.settings.lease_seconds):
                    self.current = run.run_id
                    try:
                        await self._work(run)
                    finally:
                        self.current = None
            except Exception as exc:
                verdict = classify(exc)
                if verdict.kind != "retry":
                    raise
                # The database or the object store is away: an open run stays ours, and is claimed again after
                # the wait. Ending here would leave it open for good, with nobody working the queue.
                failures += 1
                delay = backoff_delay(
                    failures, self.settings.retry_backoff_seconds, self.settings.retry_backoff_max_seconds
                )
                RETRIES.labels("training", "training.worker", verdict.reason).inc()
                log.warning(
                    "dependency unavailable; training worker waiting",
                    reason=verdict.reason,
                    attempt=failures,
                    retry_in=delay,
                    error=repr(exc),
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), 2.0)

    async def _work(self, run: TrainingRun) -> None:
        """Execute a claimed run while renewing the claim; stop if the claim is lost."""
        execution = asyncio.create_task(self.execute(run), name=f"run:{run.run_id}")
        heartbeat = asyncio.create_task(self._heartbeat(run, execution), name=f"heartbeat:{run.run_id}")
        try:
            await execution
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            log.warning("training run abandoned: its claim passed to another replica", run_id=run.run_id)
        except Exception as exc:
            if classify(exc).kind == "retry":
                # Not the run's failure: it is worked again, whole, once the dependency is back.
                raise
            log.exception("training run failed", run_id=run.run_id)
            await asyncio.to_thread(self._finish_failed, run, repr(exc))
        finally:
            heartbeat.cancel()
            execution.cancel()
            await asyncio.gather(heartbeat, execution, return_exceptions=True)

    async def _heartbeat(self, run: TrainingRun, execution: asyncio.Task[None]) -> None:
        """Renew the claim at a third of the lease; a claim found lost cancels the execution."""
        seconds = self.settings.lease_seconds
        while True:
            await asyncio.sleep(seconds / 3)
            if not await asyncio.to_thread(self.runs.renew, run.run_id, self.owner, seconds):
                execution.cancel()
                return

    async def _rows(self, run: TrainingRun) -> list[TrainingRow]:
        """Wait, up to the policy's limit, until the window holds enough labelled rows."""
        spec = self.config.model(run.model_name)
        offline = OfflineStore(self.store, spec.feature_view)
        policy = self.config.training
        deadline = time.monotonic() + policy.wait_for_data.total_seconds()
        since = aware(run.since) if run.since else None
        while True:
            rows = await asyncio.to_thread(
                offline.training_set,
                since=since,
                max_rows=policy.max_rows,
                max_event_age=self.config.dataset.max_event_age,
            )
            if enough_rows(len(rows), policy) or time.monotonic() >= deadline:
                return rows
            await asyncio.to_thread(self.runs.set_status, run.run_id, self.owner, "waiting_for_data")
            await asyncio.sleep(self.settings.data_poll_seconds)

    async def execute(self, run: TrainingRun) -> None:
        started = time.monotonic()
        rows = await self._rows(run)
        if not enough_rows(len(rows), self.config.training):
            raise RuntimeError(
                f"only {len(rows)} labelled rows since {run.since}; need {self.config.training.min_rows}"
            )
        await asyncio.to_thread(self.runs.set_status, run.run_id, self.owner, "running")
        spec = self.config.model(run.model_name)
        train, holdout = time_split(rows, self.config.training.holdout_fraction)
        result = await fitting(self.settings.fit_threads, fit, spec, run.run_id, train, holdout)
        prefix = f"models/{spec.name}/{run.run_id}"
        model = await asyncio.to_thread(result.artifact.to_bytes)
        artifact_uri = await asyncio.to_thread(self.store.put, f"{prefix}/model.skops", model)
        refit_uri, refit_sha256 = None, None
        if self.config.training.refit:
            refitted = await fitting(self.settings.fit_threads, refit, spec, run.run_id, rows)
            refit_model = await asyncio.to_thread(refitted.to_bytes)
            refit_uri = await asyncio.to_thread(self.store.put, f"{prefix}/model-refit.skops", refit_model)
            refit_sha256 = sha256_hex(refit_model)
        holdout_uri = await asyncio.to_thread(
            self.store.put,
            f"{prefix}/holdout.jsonl",
            "\n".join(json.dumps(holdout_record(r)) for r in holdout).encode(),
        )
        reference = await fitting(
            self.settings.fit_threads,
            reference_sample,
            spec,
            run.run_id,
            result.artifact,
            rows,
            holdout,
            self.config.drift.data.reference_rows,
        )
        reference_uri = await asyncio.to_thread(self.store.put, f"{prefix}/reference.json", reference.to_bytes())
        window = DataWindow(
            start=rows[0].event_time,
            end=rows[-1].event_time,
            rows=len(rows),
            train_rows=len(train),
            holdout_rows=len(holdout),
        )
        completed = TrainingRunCompleted(
            correlation_id=run.correlation_id,
            causation_id=run.request_event_id,
            run_id=run.run_id,
            model_name=spec.name,
            trigger=run.trigger,
            estimator=spec.estimator,
            params=dict(spec.params),
            feature_names=list(spec.features),
            data_window=window,
            metrics=result.metrics,
            artifact_uri=artifact_uri,
            artifact_sha256=sha256_hex(model),
            holdout_uri=holdout_uri,
            refit_artifact_uri=refit_uri,
            refit_artifact_sha256=refit_sha256,
            duration_seconds=round(time.monotonic() - started, 3),
            reference_uri=reference_uri,
        )
        if not await asyncio.to_thread(self._finish_completed, run, completed):
            log.warning("training run result dropped: the run is no longer ours", run_id=run.run_id)
            return
        self.relay.wakeup.set()
        log.info("training run completed", run_id=run.run_id, metrics=result.metrics, rows=len(rows))

    def _finish_completed(self, run: TrainingRun, completed: TrainingRunCompleted) -> bool:
        """Close the run and announce it in one transaction, only while we still own it: one result per run."""
        with self.runs.session() as session:
            closed = self.runs.finish(
                session,
                run.run_id,
                self.owner,
                status="completed",
                metrics=completed.metrics,
                artifact_uri=completed.artifact_uri,
                data_window=completed.data_window.model_dump(mode="json"),
            )
            if closed:
                enqueue(session, "training", completed, completed.model_name)
                session.commit()
        return closed

    def _finish_failed(self, run: TrainingRun, error: str) -> None:
        with self.runs.session() as session:
            if not self.runs.finish(session, run.run_id, self.owner, status="failed", error=error):
                return
            failed = TrainingRunFailed(
                correlation_id=run.correlation_id,
                causation_id=run.request_event_id,
                run_id=run.run_id,
                model_name=run.model_name,
                trigger=run.trigger,
                error=error,
            )
            enqueue(session, "training", failed, run.model_name)
            session.commit()
        self.relay.wakeup.set()
