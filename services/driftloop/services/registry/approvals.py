"""The approval deadline: versions that wait for a person longer than ``promotion.approval_timeout``.

A background task of the registry looks at the waiting versions every
``approval_check_seconds``. Each decision is a conditional update in the
database (``Registry.refuse`` and ``Registry.escalate``), so every replica may
run the task: the first one to act wins, the others find nothing left to do.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Counter, Gauge

from driftloop.config import PromotionPolicy
from driftloop.contracts import utcnow
from driftloop.db import OutboxRelay
from driftloop.logging import get_logger
from driftloop.services.registry.domain import approval_overdue
from driftloop.services.registry.store import Conflict, Registry

log = get_logger(__name__)

PENDING_APPROVALS = Gauge("driftloop_pending_approvals", "Versions waiting for an approver.", ["model"])
APPROVAL_ESCALATIONS = Counter(
    "driftloop_approval_escalations_total", "Versions that waited past the approval timeout, escalated.", ["model"]
)
APPROVAL_TIMEOUTS = Counter(
    "driftloop_approval_timeouts_total", "Versions rejected because nobody approved them in time.", ["model"]
)

TIMED_OUT = "approval timed out"


class ApprovalWatch:
    def __init__(self, registry: Registry, policy: PromotionPolicy, relay: OutboxRelay, every: float) -> None:
        self.registry = registry
        self.policy = policy
        self.relay = relay
        self.every = every
        self._task: asyncio.Task[None] | None = None
        self._seen: set[str] = set()

    def check(self) -> int:
        """Act on every overdue version once; returns how many it rejected or escalated."""
        now = utcnow()
        pending = self.registry.pending()
        counts: dict[str, int] = {}
        acted = 0
        for row in pending:
            counts[row.model_name] = counts.get(row.model_name, 0) + 1
            if row.awaiting_since is None or not approval_overdue(
                row.awaiting_since, now, self.policy.approval_timeout
            ):
                continue
            with self.registry.session() as s:
                if self.policy.on_approval_timeout == "reject":
                    try:
                        self.registry.refuse(
                            s, row.model_name, row.version, actor="registry", actor_role=None, reason=TIMED_OUT
                        )
                    except Conflict:
                        continue  # decided meanwhile, by a person or another replica
                    APPROVAL_TIMEOUTS.labels(row.model_name).inc()
                    counts[row.model_name] -= 1
                    log.warning("approval timed out", model=row.model_name, version=row.version)
                elif self.registry.escalate(s, row.model_name, row.version, waited=str(self.policy.approval_timeout)):
                    APPROVAL_ESCALATIONS.labels(row.model_name).inc()
                    log.warning(
                        "approval overdue, escalated",
                        model=row.model_name,
                        version=row.version,
                        awaiting_since=row.awaiting_since.isoformat(),
                    )
                else:
                    continue
                s.commit()
                acted += 1
        # A model seen waiting before and waiting for nothing now goes back to 0, not to its last count.
        self._seen |= set(counts)
        for model in self._seen:
            PENDING_APPROVALS.labels(model).set(counts.get(model, 0))
        return acted

    async def _run(self) -> None:
        while True:
            try:
                if await asyncio.to_thread(self.check):
                    self.relay.wakeup.set()
            except Exception as exc:
                log.warning("approval check failed", error=repr(exc))
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="approval-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
