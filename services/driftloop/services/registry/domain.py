"""The promotion gate and version numbering: pure functions of metrics and policy.

REST promotions and event-driven promotions both end in ``store.promote``;
what differs is only who decided (the gate or an operator), which the audit
log records.
"""

from __future__ import annotations

from collections.abc import Iterable

from driftloop.config import PromotionPolicy
from driftloop.contracts.events import GateDecision, Metrics


def next_version(existing: Iterable[int]) -> int:
    """Versions count up from 1 per model and are never reused."""
    return max(existing, default=0) + 1


def gate(challenger: Metrics, champion: Metrics | None, policy: PromotionPolicy) -> GateDecision:
    """The challenger wins only if it beats the champion by ``min_improvement`` on the same holdout.

    >>> from driftloop.config import PromotionPolicy
    >>> gate({"accuracy": 0.9}, {"accuracy": 0.5}, PromotionPolicy(min_improvement=0.01)).passed
    True
    >>> gate({"accuracy": 0.9}, {"accuracy": 0.895}, PromotionPolicy(min_improvement=0.01)).passed
    False
    """
    metric = policy.metric
    ours = challenger[metric]
    if champion is None:
        return GateDecision(
            metric=metric,
            challenger=ours,
            champion=None,
            min_improvement=policy.min_improvement,
            passed=True,
            reason="no champion yet",
        )
    theirs = champion[metric]
    passed = ours >= theirs + policy.min_improvement
    comparison = ">=" if passed else "<"
    reason = f"{metric} {ours:.4f} {comparison} champion {theirs:.4f} + {policy.min_improvement}"
    return GateDecision(
        metric=metric,
        challenger=ours,
        champion=theirs,
        min_improvement=policy.min_improvement,
        passed=passed,
        reason=reason,
    )
