"""The promotion gate: a pure function of two metric sets and a policy."""

from __future__ import annotations

import pytest

from driftloop.config import PromotionPolicy
from driftloop.services.registry.domain import gate, next_version


@pytest.mark.parametrize(
    ("challenger", "champion", "policy", "passed", "reason"),
    [
        ({"accuracy": 0.7}, None, PromotionPolicy(), True, "no champion yet"),
        ({"accuracy": 0.90}, {"accuracy": 0.50}, PromotionPolicy(min_improvement=0.01), True, ">="),
        ({"accuracy": 0.505}, {"accuracy": 0.50}, PromotionPolicy(min_improvement=0.01), False, "<"),
        ({"accuracy": 0.51}, {"accuracy": 0.50}, PromotionPolicy(min_improvement=0.01), True, ">="),
        ({"accuracy": 0.50}, {"accuracy": 0.50}, PromotionPolicy(min_improvement=0.0), True, ">="),
        ({"accuracy": 0.49}, {"accuracy": 0.50}, PromotionPolicy(min_improvement=0.0), False, "<"),
        ({"accuracy": 0.9, "f1": 0.4}, {"accuracy": 0.5, "f1": 0.6}, PromotionPolicy(metric="f1"), False, "f1"),
        ({"accuracy": 0.9, "f1": 0.8}, {"accuracy": 0.95, "f1": 0.6}, PromotionPolicy(metric="f1"), True, "f1"),
    ],
)
def test_gate_decides_on_the_policy_metric(
    challenger: dict[str, float], champion: dict[str, float] | None, policy: PromotionPolicy, passed: bool, reason: str
) -> None:
    decision = gate(challenger, champion, policy)
    assert decision.passed is passed
    assert reason in decision.reason
    assert decision.metric == policy.metric
    assert decision.challenger == challenger[policy.metric]
    assert decision.champion == (champion[policy.metric] if champion else None)


def test_versions_count_up_and_are_never_reused() -> None:
    assert next_version([]) == 1
    assert next_version([1, 2, 3]) == 4
    assert next_version([1, 3]) == 4
